"""Receiving: a request in, verified, recorded, answered. Nothing else runs inline.

    app.py         the receiving WSGI app (webhook, /healthz, /readyz, /metrics): the path
                   readable top to bottom, request -> verify -> record -> answer
    body.py        reading a request body within one deadline
    verify.py      the signature and the replay window (protocol.py holds the HMAC)
    record.py      a verified body becomes an event with its routed plan, committed
    rejections.py  a trace of refused requests (written off the request path)
    drain.py       spooled events committed as the receiver commits them, once the store is back
"""
