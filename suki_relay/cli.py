"""The `suki-relay` command. User mistakes print cleanly and exit 1; usage errors exit 2."""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import signal
import sys
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from .errors import ConfigError, RelayError, StoreUnavailable

# ---------------------------------------------------------------- output helpers


def _when(ts: float | None) -> str:
    if not ts:
        return "-"
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S")


def table(rows: list[dict[str, Any]], columns: list[str]) -> str:
    cells = [[str(r.get(c, "")) if r.get(c) is not None else "-" for c in columns] for r in rows]
    widths = [max([len(c)] + [len(row[i]) for row in cells]) for i, c in enumerate(columns)]
    lines = ["  ".join(c.upper().ljust(w) for c, w in zip(columns, widths, strict=True))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)) for row in cells]
    return "\n".join(line.rstrip() for line in lines)


def emit(args: argparse.Namespace, data: Any, text: str) -> None:
    print(json.dumps(data, indent=2, default=str) if args.json else text)


def parse_since(value: str | None) -> float | None:
    """`30m`, `2h`, `7d` ago, or an ISO 8601 time."""
    if value is None:
        return None
    m = re.fullmatch(r"(\d+(?:\.\d+)?)([smhd])", value.strip())
    if m:
        unit = {"s": 1, "m": 60, "h": 3600, "d": 86400}[m.group(2)]
        return time.time() - float(m.group(1)) * unit
    try:
        dt = datetime.fromisoformat(value)
    except ValueError:
        raise RelayError(f"cannot read time {value!r}: use 30m, 2h, 7d or ISO 8601") from None
    return (dt if dt.tzinfo else dt.replace(tzinfo=UTC)).timestamp()


def _config(args: argparse.Namespace) -> Any:
    from .config import load_config

    return load_config(args.config)


def _store(args: argparse.Namespace, config: Any = None) -> Any:
    """The store of ``config``, or from the config's store settings alone (then no other
    setting, such as the webhook secret, is needed)."""
    from .config import load_store_url
    from .store import open_store

    url, base_dir = (config.store_url, config.base_dir) if config else load_store_url(args.config)
    return open_store(url, base_dir)


def _read_body(arg: str) -> bytes:
    from .dryrun import SAMPLES, sample

    path = Path(arg)
    if path.is_file():
        return path.read_bytes()
    if arg in SAMPLES:
        return sample(arg)
    raise RelayError(f"{arg}: no such file (or sample: {', '.join(SAMPLES)})")


# ---------------------------------------------------------------- commands


def cmd_check(args: argparse.Namespace) -> int:
    from .dryrun import check_templates, seen_statuses, status_problems

    config = _config(args)
    problems = check_templates(config) + status_problems(config, seen_statuses(config))
    _warn(problems)
    if any(not p.warning for p in problems):
        raise ConfigError([p for p in problems if not p.warning])
    print(f"{config.file}: ok ({len(config.actions)} actions, {len(config.rules)} rules, "
          f"store {config.store_url.split('://')[0]})")
    return 0


def _warn(problems: list[Any]) -> None:
    for p in problems:
        if p.warning:
            print(str(p), file=sys.stderr)


def cmd_routes_test(args: argparse.Namespace) -> int:
    from .dryrun import dry_run, seen_statuses, status_problems

    config = _config(args)
    body = _read_body(args.file)
    statuses = status_problems(config, seen_statuses(config))
    for p in statuses:
        print(str(p) if p.warning else f"{p.file}:{p.line}: error: {p.where}: {p.message}",
              file=sys.stderr)
    try:
        plan, previews = dry_run(config, body)
    except ValueError:
        raise RelayError(f"{args.file}: not JSON") from None
    data = {"rules": plan.rules, "actions": [p.__dict__ for p in previews],
            "unmatched": not plan.matched}
    lines = [f"rules matched: {', '.join(plan.rules) if plan.rules else '(none)'}"]
    if not plan.matched:
        lines.append("no rule matched: " + ("running `unmatched` actions" if plan.actions
                                            else "the event would be recorded and reported only"))
    for p in previews:
        lines.append(f"\naction {p.action} ({p.type}):")
        if p.error:
            lines.append(f"  ERROR {f'option {p.option}: ' if p.option else ''}{p.error}")
        else:
            for key, value in (p.sends or {}).items():
                shown = value if isinstance(value, str) else json.dumps(value)
                lines.append(f"  {key}: {shown}")
    emit(args, data, "\n".join(lines))
    failed = any(p.error for p in previews) or any(not p.warning for p in statuses)
    if args.expect is not None:
        ok, why = _expectation(config, plan.rules, plan.actions, args.expect)
        if not ok:
            print(f"expectation failed: {why}\n  expected: {' '.join(args.expect) or '(nothing)'}"
                  f"\n  matched:  rules {', '.join(plan.rules) or '(none)'}; actions "
                  f"{', '.join(plan.actions) or '(none)'}", file=sys.stderr)
            return 1
    return 1 if failed else 0


def _expectation(config: Any, rules: list[str], actions: list[str],
                 expected: list[str]) -> tuple[bool, str]:
    rule_names = {r.name for r in config.rules}
    unknown = [e for e in expected if e not in rule_names and e not in config.actions]
    if unknown:
        return False, f"no rule or action is named {', '.join(unknown)}"
    want_rules = {e for e in expected if e in rule_names}
    want_actions = {e for e in expected if e in config.actions}
    if not expected and (rules or actions):
        return False, f"expected nothing to match, got {', '.join(rules + actions)}"
    if want_rules and want_rules != set(rules):
        return False, f"rules matched: {', '.join(rules) or '(none)'}"
    if want_actions and want_actions != set(actions):
        return False, f"actions planned: {', '.join(actions) or '(none)'}"
    return True, ""


def cmd_send(args: argparse.Namespace) -> int:
    import requests

    from . import signing

    body = _read_body(args.file)
    secret = args.secret or os.environ.get("SUKI_WEBHOOK_SECRET")
    if not secret:
        secret = _config(args).receiver.secrets[0]
    headers = signing.signed_headers(secret, body)
    try:
        resp = requests.post(args.url, data=body, headers=headers, timeout=args.timeout)
    except requests.RequestException as exc:
        raise RelayError(f"could not reach {args.url}: {type(exc).__name__}") from None
    print(f"{resp.status_code} {resp.reason}")
    print(resp.text)
    return 0 if resp.ok else 1


def cmd_plugins(args: argparse.Namespace) -> int:
    from .plugins import discover

    types = discover()
    rows = [{"type": t.name, "package": t.package, "version": t.version, "object": t.value,
             "status": "ok" if t.cls else f"BROKEN: {t.error}"} for t in types.values()]
    rows.sort(key=lambda r: r["type"])
    emit(args, rows, table(rows, ["type", "package", "version", "object", "status"]))
    return 1 if any(not t.cls for t in types.values()) else 0


def cmd_serve(args: argparse.Namespace) -> int:
    if args.log_format:
        os.environ["SUKI_RELAY_LOG_FORMAT"] = args.log_format
    if args.config:
        os.environ["SUKI_RELAY_CONFIG"] = str(Path(args.config).resolve())
    from .serve import serve

    serve(args.config, {"bind": args.bind, "workers": args.workers, "threads": args.threads})
    return 0


def cmd_worker(args: argparse.Namespace) -> int:
    from . import logs
    from .deliver import Deliverer

    logs.setup(args.log_format)
    config = _config(args)
    deliverer = Deliverer(config, _store(args, config))
    done = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: done.set())
    deliverer.start()
    print(f"suki-relay worker delivering from {config.store_url.split('://')[0]} store",
          file=sys.stderr)
    done.wait()
    deliverer.stop()
    return 0


def cmd_events(args: argparse.Namespace) -> int:
    from .store import EventFilter

    f = EventFilter(status=args.status, session_id=args.session, encounter_id=args.encounter,
                    since=parse_since(args.since), until=parse_since(args.until),
                    matched=args.matched, malformed=args.malformed, limit=args.limit)
    rows = _store(args).events(f)
    for r in rows:
        r["received"] = _when(r["received_at"])
        r["deliveries"] = " ".join(f"{k}={v}" for k, v in sorted(r["deliveries"].items())) or \
            ("unmatched" if not r["matched"] else "-")
        r["status"] = "MALFORMED" if r["malformed"] else r["status"]
    emit(args, rows, table(rows, ["id", "received", "status", "session_id", "encounter_id",
                                  "deliveries"]))
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    event = _store(args).event(args.event_id)
    if event is None:
        raise RelayError(f"no event {args.event_id}")
    body = event.pop("body")
    if args.payload:
        event["payload"] = body.decode("utf-8", "replace")
    lines = [f"event {event['id']}  received {_when(event['received_at'])}  "
             f"status {event['status'] if not event['malformed'] else 'MALFORMED'}",
             f"session {event['session_id']}  encounter {event['encounter_id']}",
             f"rules matched: {', '.join(event['rules']) or '(none)'}"]
    for d in event["delivery_list"]:
        lines.append(f"\ndelivery {d['id']}  action {d['action']}  state {d['state']}  "
                     f"attempts {d['attempts']}" + (f"  next {_when(d['next_attempt_at'])}"
                                                    if d["state"] == "pending" else ""))
        for a in d["attempt_list"]:
            a["started"] = _when(a["started_at"])
            a["ms"] = round(a["duration"] * 1000, 1)
        if d["attempt_list"]:
            lines.append(_indent(table(d["attempt_list"],
                                       ["attempt", "started", "outcome", "http_status", "ms",
                                        "error"])))
    if args.payload:
        lines.append("\npayload:\n" + event["payload"])
    emit(args, event, "\n".join(lines))
    return 0


def _indent(text: str) -> str:
    return "\n".join("  " + line for line in text.splitlines())


def cmd_deliveries(args: argparse.Namespace) -> int:
    rows = _store(args).deliveries(state=args.state, action=args.action,
                                   since=parse_since(args.since), limit=args.limit)
    for r in rows:
        r["updated"] = _when(r["updated_at"])
    emit(args, rows, table(rows, ["id", "event_id", "action", "state", "attempts", "updated",
                                  "last_error"]))
    return 0


def cmd_replay(args: argparse.Namespace) -> int:
    store = _store(args)
    if args.event_id:
        event = store.event(args.event_id)
        if event is None:
            raise RelayError(f"no event {args.event_id}")
        chosen = [d for d in event["delivery_list"]
                  if (not args.failed or d["state"] == "failed")
                  and (not args.action or d["action"] == args.action)
                  and d["state"] != "in_flight"]
    elif args.failed:
        chosen = store.deliveries(state="failed", action=args.action,
                                  since=parse_since(args.since), limit=args.limit)
    else:
        raise RelayError("give an EVENT_ID, or --failed for every failed delivery")
    rows = [{"id": d["id"], "event_id": d["event_id"], "action": d["action"],
             "state": d["state"]} for d in chosen]
    if args.dry_run:
        emit(args, rows, f"would replay {len(rows)} deliveries\n" + table(
            rows, ["id", "event_id", "action", "state"]))
        return 0
    n = store.reopen([r["id"] for r in rows])
    emit(args, rows, f"replaying {n} deliveries (running workers pick them up now)")
    return 0


def cmd_reroute(args: argparse.Namespace) -> int:
    from .routing import route

    config = _config(args)
    store = _store(args, config)
    event = store.event(args.event_id)
    if event is None:
        raise RelayError(f"no event {args.event_id}")
    if event["malformed"]:
        raise RelayError(f"event {args.event_id} is malformed; nothing to route")
    plan = route(config.rules, config.unmatched, json.loads(event["body"]))
    have = {d["action"] for d in event["delivery_list"]}
    new = [a for a in plan.actions if a not in have]
    data = {"rules": plan.rules, "new_actions": new, "existing_actions": sorted(have)}
    if not args.dry_run:
        store.add_deliveries(args.event_id, plan.rules, new)
    verb = "would plan" if args.dry_run else "planned"
    emit(args, data, f"rules matched: {', '.join(plan.rules) or '(none)'}\n"
                     f"{verb} {len(new)} new deliveries: {', '.join(new) or '-'}")
    return 0


def cmd_prune(args: argparse.Namespace) -> int:
    config = _config(args)
    older = args.older_than or (f"{config.retention_days:g}d" if config.retention_days else None)
    if older is None:
        raise RelayError("give --older-than (e.g. 30d) or set retention.days in the config")
    before = parse_since(older)
    assert before is not None
    n = _store(args, config).prune(before)
    emit(args, {"deleted_events": n}, f"deleted {n} finished events received before "
                                      f"{_when(before)}")
    return 0


# ---------------------------------------------------------------- parser


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="suki-relay", description=__doc__)
    p.add_argument("-c", "--config", help="actions.yaml (default: $SUKI_RELAY_CONFIG or "
                                          "./actions.yaml)")
    sub = p.add_subparsers(dest="command", required=True)

    def add(name: str, func: Any, help: str, json_flag: bool = False) -> argparse.ArgumentParser:
        sp = sub.add_parser(name, help=help, description=help)
        sp.set_defaults(func=func)
        sp.add_argument("-c", "--config", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
        if json_flag:
            sp.add_argument("--json", action="store_true", help="JSON output, for scripts")
        return sp

    sp = add("serve", cmd_serve, "run the relay under gunicorn (receives and delivers)")
    sp.add_argument("--bind", "-b", default=None, help="address (default 127.0.0.1:8000)")
    sp.add_argument("--workers", "-w", type=int, default=None, help="processes (default 2)")
    sp.add_argument("--threads", type=int, default=None, help="threads per process (default 16)")
    sp.add_argument("--log-format", choices=("text", "json"))
    sp = add("worker", cmd_worker, "deliver only, without receiving")
    sp.add_argument("--log-format", choices=("text", "json"))
    add("check", cmd_check, "validate actions.yaml, plugins and templates")
    routes = sub.add_parser("routes", help="routing tools").add_subparsers(dest="sub",
                                                                           required=True)
    sp = routes.add_parser("test", help="dry run: which rules match and what would be sent")
    sp.set_defaults(func=cmd_routes_test)
    sp.add_argument("file", help="a JSON body, or a sample name (success, failure, ...)")
    sp.add_argument("--expect", nargs="*", help="exit 1 unless exactly these rules/actions match")
    sp.add_argument("--json", action="store_true")
    sp.add_argument("-c", "--config", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    sp = add("send", cmd_send, "sign a body with the configured secret and POST it")
    sp.add_argument("file", help="a JSON body, or a sample name")
    sp.add_argument("--url", default="http://127.0.0.1:8000/webhooks/notification")
    sp.add_argument("--secret", help="default: $SUKI_WEBHOOK_SECRET, else the config's first")
    sp.add_argument("--timeout", type=float, default=10.0)
    add("plugins", cmd_plugins, "list installed action types", json_flag=True)

    sp = add("events", cmd_events, "list received events, newest first", json_flag=True)
    sp.add_argument("--status")
    sp.add_argument("--session")
    sp.add_argument("--encounter")
    sp.add_argument("--since", help="30m, 2h, 7d or ISO 8601")
    sp.add_argument("--until")
    sp.add_argument("--matched", action=argparse.BooleanOptionalAction, default=None)
    sp.add_argument("--malformed", action=argparse.BooleanOptionalAction, default=None)
    sp.add_argument("--limit", type=int, default=50)
    sp = add("show", cmd_show, "one event, its deliveries and every attempt", json_flag=True)
    sp.add_argument("event_id")
    sp.add_argument("--payload", action="store_true", help="also print the body (contains PHI)")
    sp = add("deliveries", cmd_deliveries, "list deliveries", json_flag=True)
    sp.add_argument("--state", choices=("pending", "in_flight", "done", "failed"))
    sp.add_argument("--action")
    sp.add_argument("--since")
    sp.add_argument("--limit", type=int, default=100)
    sp = add("replay", cmd_replay, "run deliveries again (recorded as new attempts)",
             json_flag=True)
    sp.add_argument("event_id", nargs="?")
    sp.add_argument("--failed", action="store_true", help="only failed deliveries")
    sp.add_argument("--action", help="only this action")
    sp.add_argument("--since", help="with --failed: failed since (30m, 2h, 7d, ISO 8601)")
    sp.add_argument("--limit", type=int, default=10000)
    sp.add_argument("--dry-run", action="store_true")
    sp = add("reroute", cmd_reroute, "match a stored event against the current rules",
             json_flag=True)
    sp.add_argument("event_id")
    sp.add_argument("--dry-run", action="store_true")
    sp = add("prune", cmd_prune, "delete old finished events (never unfinished ones)",
             json_flag=True)
    sp.add_argument("--older-than", help="e.g. 30d (default: retention.days from the config)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if not hasattr(args, "json"):
        args.json = False
    if args.func is not cmd_serve:  # the pool's reconnect attempts would bury the one message
        logging.getLogger("psycopg.pool").setLevel(logging.CRITICAL)
    try:
        return int(args.func(args) or 0)
    except StoreUnavailable as exc:
        print(f"error: the store cannot be reached ({exc}); is the database up?", file=sys.stderr)
        return 1
    except ConfigError as exc:
        print(f"{len(exc.problems)} problem(s) found:", file=sys.stderr)
        for problem in exc.problems:
            print(f"  {problem}", file=sys.stderr)
        return 1
    except RelayError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except BrokenPipeError:
        return 0


if __name__ == "__main__":
    sys.exit(main())
