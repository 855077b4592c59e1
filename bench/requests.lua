-- Each wrk thread sends its own share of pre-signed, distinct requests (no duplicates).
local threads = {}
local counter = 0

function setup(thread)
  thread:set("id", counter)
  counter = counter + 1
  table.insert(threads, thread)
end

function init(args)
  local n = tonumber(args[2])
  reqs = {}
  local lineno = 0
  for line in io.lines(args[1]) do
    if lineno % n == id then
      local ts, sig, body = line:match("^([^\t]+)\t([^\t]+)\t(.*)$")
      reqs[#reqs + 1] = wrk.format("POST", "/webhooks/notification", {
        ["Content-Type"] = "application/json", ["generated-at"] = ts,
        ["X-API-Key"] = sig, ["Connection"] = "close"}, body)
    end
    lineno = lineno + 1
  end
  i = 0
end

function request()
  i = i + 1
  if i > #reqs then i = 1 end  -- run.py makes more than wrk can send
  return reqs[i]
end

function done(summary, latency, requests)
  for _, p in ipairs({50, 99}) do
    io.write(string.format("p%d_us %d\n", p, latency:percentile(p)))
  end
end
