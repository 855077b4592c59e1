"""Routing and rendering without sending: `suki-relay routes test` and `suki-relay check`."""

from __future__ import annotations

import json
from dataclasses import dataclass
from importlib import resources
from typing import Any

from . import fetch
from .action import Delivery
from .config import Config
from .errors import Problem
from .routing import Plan, route
from .suki_api import safe_url

SAMPLES = ("success", "failure", "timeout", "cancelled")


def sample(name: str) -> bytes:
    return (resources.files("suki_relay") / "samples" / f"{name}.json").read_bytes()


@dataclass
class Preview:
    action: str
    type: str
    sends: dict[str, Any] | None
    error: str | None
    fetch: dict[str, str] | None = None  # relation -> URL that would be fetched (not fetched)


# what an on_failure action sees as `failed` in dry runs and `check`
SAMPLE_FAILED = {"action": "forward-to-ehr", "error": "gave up after 20 tries: HTTP 503",
                 "attempts": 20, "delivery_id": "dlv_dry_run_failed"}


def fake_delivery(action: str, body: bytes, payload: Any,
                  failed: dict[str, Any] | None = None) -> Delivery:
    return Delivery(id="dlv_dry_run", event_id="evt_dry_run", action=action, attempt=1,
                    event=payload, raw_body=body, received_at="1970-01-01T00:00:00.000Z",
                    failed=failed)


def preview_action(config: Config, name: str, body: bytes, payload: Any) -> Preview:
    """What the action would do with this event. Links under ``fetch:`` are shown, not
    fetched: templates see stand-in documents shaped like Suki's (fetch.placeholders).
    On_failure actions are rendered with a sample `failed` as well."""
    spec = config.actions[name]
    would_fetch: dict[str, str] | None = None
    failed = SAMPLE_FAILED if name in config.on_failure else None
    try:
        delivery = fake_delivery(name, body, payload, failed)
        if spec.fetch:
            hrefs = fetch.links(payload, spec.fetch)
            base = config.suki.base_url if config.suki else ""
            would_fetch = {rel: safe_url(base, href) for rel, href in hrefs.items()}
            delivery.fetched = fetch.placeholders(spec.fetch)
        sends = spec.action.preview(delivery)
        return Preview(name, spec.type, sends, None, would_fetch)
    except Exception as exc:
        return Preview(name, spec.type, None, f"{type(exc).__name__}: {exc}", would_fetch)


def dry_run(config: Config, body: bytes) -> tuple[Plan, list[Preview]]:
    payload = json.loads(body)
    plan = route(config.rules, config.unmatched, payload)
    return plan, [preview_action(config, a, body, payload) for a in plan.actions]


def check_templates(config: Config) -> list[Problem]:
    """Render every action against the samples that route to it (or, if none does, all)."""
    problems: list[Problem] = []
    routed: dict[str, list[str]] = {name: [] for name in config.actions}
    bodies = {name: sample(name) for name in SAMPLES}
    for name, body in bodies.items():
        for action in route(config.rules, config.unmatched, json.loads(body)).actions:
            routed.setdefault(action, []).append(name)
    for action, names in routed.items():
        if action not in config.actions:
            continue
        if action in config.on_failure:  # any event may have a failed delivery
            names = list(SAMPLES)
        tried = names or list(SAMPLES)
        failures = []
        for name in tried:
            result = preview_action(config, action, bodies[name], json.loads(bodies[name]))
            if result.error:
                failures.append((name, result.error))
        if names:
            problems += [Problem(f"actions.{action}", f"rendering against the {n} sample: {e}",
                                 file=str(config.file)) for n, e in failures]
        elif len(failures) == len(tried):
            problems.append(Problem(f"actions.{action}", "no sample routes to it and it renders "
                                    f"against none of them: {failures[0][1]}", file=str(config.file)))
    return problems
