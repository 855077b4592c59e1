"""Baselines for the acknowledgement benchmark, served by the same gunicorn settings.

``bare``: reads the body and answers 200 (the ceiling). ``flask_app``: the handler from
Suki's documentation (verify, parse, branch), which stores nothing.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import threading
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

SECRET = os.environ.get("SUKI_WEBHOOK_SECRET", "bench-secret").encode()


def bare(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
    length = int(environ.get("CONTENT_LENGTH") or 0)
    environ["wsgi.input"].read(length)
    start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", "2")])
    return [b"{}"]


def flask_app() -> Any:
    """gunicorn 'bench.apps:flask_app()'."""
    from flask import Flask, request

    app = Flask(__name__)

    @app.post("/webhooks/notification")
    def notification() -> tuple[str, int]:
        generated_at = request.headers.get("generated-at")
        signature = request.headers.get("X-API-Key")
        raw = request.get_data()
        if not generated_at or not signature:
            return "", 401
        expected = hmac.new(SECRET, generated_at.encode() + b":" + raw,
                            hashlib.sha256).hexdigest()
        if not hmac.compare_digest(expected, signature.lower()):
            return "", 401
        payload = json.loads(raw)
        if payload.get("status") == "success":
            pass  # fetch the note here
        elif payload.get("status") == "failure":
            pass  # log error_code, alert
        return "", 200

    return app


def relay_without(part: str) -> Any:
    """The relay with part of recording taken out, to show where acknowledgement time goes
    (``bench/run.py --only breakdown``); configured by $SUKI_RELAY_CONFIG, served like the
    relay. ``store``: no store at all, every event answered as accepted at once; ``sqlite``:
    group commit and the cross-process writer lock around a batch that writes nothing;
    ``nothing``: the relay as it is; ``rejections``: the relay without its record of refused
    requests (for ``--only flood``). Not for real use: the first two store nothing."""
    from suki_relay.serve.assemble import create_app
    from suki_relay.store import Recorded
    from suki_relay.store.group_commit import GroupCommit

    app = create_app()
    if part == "store":
        class Accept:
            def submit(self, event: Any) -> Recorded:
                return Recorded(event.id, False)

        app.recorder = Accept()  # type: ignore[assignment]
    elif part == "sqlite":
        app.recorder = GroupCommit(lambda events: [Recorded(e.id, False) for e in events],
                                   app.store.exclusive)
    elif part == "rejections":
        class Forget:
            def add(self, *args: Any, **kwargs: Any) -> None:
                pass

            def stop(self) -> None:
                pass

        app.rejections = Forget()  # type: ignore[assignment]
    elif part != "nothing":
        raise ValueError(part)
    if os.environ.get("SUKI_BENCH_COUNTS") and part != "store":
        count_batches(app, Path(os.environ["SUKI_BENCH_COUNTS"]))
    return app


def count_batches(app: Any, folder: Path) -> None:
    """Tally the recorder's batches (how many, how many events, the seconds spent in the
    store's part of them: from asking for a connection to the commit's return) and write
    the tally to ``folder/batches-<pid>.json`` every 0.2 s. One leader runs a batch at a
    time, so the tally needs no lock."""
    recorder = app.recorder
    inner = recorder.batch
    tally = {"batches": 0, "events": 0, "seconds": 0.0}

    def batch(items: list[Any]) -> Any:
        start = time.perf_counter()
        try:
            return inner(items)
        finally:
            tally["batches"] += 1
            tally["events"] += len(items)
            tally["seconds"] += time.perf_counter() - start

    recorder.batch = batch
    path = folder / f"batches-{os.getpid()}.json"

    def write() -> None:
        while True:
            time.sleep(0.2)
            path.write_text(json.dumps(tally))

    threading.Thread(target=write, daemon=True, name="bench-counts").start()


_SUKI_NOTE = json.dumps({"summary": [
    {"title": "Assessment", "content": "Stable angina. " * 40, "loinc_code": "51848-0"},
    {"title": "Plan", "content": "Follow up in two weeks. " * 30, "loinc_code": "18776-5"}],
    "structured_data": [{"title": "Vitals", "data": {"bp": "120/80"}}]}).encode()


def suki_api(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
    """Suki's follow-up API for the fetch benchmark: login, and a ~1.5 kB note for any
    session's content (with the token checked), as cheap as ``bare`` otherwise."""
    length = int(environ.get("CONTENT_LENGTH") or 0)
    environ["wsgi.input"].read(length)
    path = environ.get("PATH_INFO", "")
    if path == "/api/v1/auth/login":
        body = b'{"suki_token": "bench-token"}'
    elif path.endswith("/content") and environ.get("HTTP_SDP_SUKI_TOKEN") == "bench-token":
        body = _SUKI_NOTE
    else:
        start_response("401 Unauthorized", [("Content-Length", "0")])
        return [b""]
    start_response("200 OK", [("Content-Type", "application/json"),
                              ("Content-Length", str(len(body)))])
    return [body]


_CAPABILITIES = json.dumps({
    "resourceType": "CapabilityStatement", "status": "active", "kind": "instance",
    "fhirVersion": "4.0.1", "format": ["json"],
    "rest": [{"mode": "server", "resource": [{
        "type": "DocumentReference", "conditionalCreate": True,
        "interaction": [{"code": "create"}, {"code": "search-type"}]}]}]}).encode()


def fhir_api(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
    """A FHIR server for the fetch benchmark's fhir path: a CapabilityStatement declaring
    conditional create, and 201 with a Location for any DocumentReference POSTed (read,
    not kept), as cheap as ``bare`` otherwise."""
    length = int(environ.get("CONTENT_LENGTH") or 0)
    environ["wsgi.input"].read(length)
    if environ.get("PATH_INFO", "").endswith("/metadata"):
        start_response("200 OK", [("Content-Type", "application/fhir+json"),
                                  ("Content-Length", str(len(_CAPABILITIES)))])
        return [_CAPABILITIES]
    start_response("201 Created", [("Location", "DocumentReference/1/_history/1"),
                                   ("Content-Length", "0")])
    return [b""]
