"""Routing and rendering without sending: `suki-relay routes test` and `suki-relay check`."""

from __future__ import annotations

import difflib
import json
import time
from collections.abc import Iterable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from suki_relay.config.load import Config, parse_config
from suki_relay.config.routing import Plan, route
from suki_relay.deliver import fetch
from suki_relay.deliver.action import Delivery
from suki_relay.deliver.suki_api import safe_url
from suki_relay.errors import ConfigError, Problem, RelayError
from suki_relay.protocol import DOCUMENTED_STATUSES

SAMPLES = (*DOCUMENTED_STATUSES, "timeout", "cancelled")
SEEN_DAYS = 90  # statuses the store saw within this many days count as known


def sample(name: str) -> bytes:
    return (resources.files("suki_relay") / "samples" / f"{name}.json").read_bytes()


@dataclass
class Preview:
    action: str
    type: str
    sends: dict[str, Any] | None
    error: str | None
    fetch: dict[str, str] | None = None  # relation -> URL that would be fetched (not fetched)
    option: str | None = None  # the option whose template failed, when one did


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
    failed = SAMPLE_FAILED if name in config.on_failure or name in (config.on_pause or ()) \
        else None
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
        return Preview(name, spec.type, None, f"{type(exc).__name__}: {exc}", would_fetch,
                       getattr(exc, "option", None))


def dry_run(config: Config, body: bytes) -> tuple[Plan, list[Preview]]:
    payload = json.loads(body)
    plan = route(config.rules, config.unmatched, payload)
    return plan, [preview_action(config, a, body, payload) for a in plan.actions]


def further_problems(config: Config) -> list[Problem]:
    """What `check` finds in a config that loaded: every template rendered against the
    samples, rules on unknown statuses. The one set of rules for `check`, `serve` and a
    reload: an error stops `serve` and refuses a reload, a warning is logged."""
    return check_templates(config) + status_problems(config)


def checked_config(text: str, file: Path) -> tuple[Config, list[Problem]]:
    """The config in ``text`` and its warnings; a ConfigError if it does not load or if
    `check` would call anything in it an error."""
    config = parse_config(text, file)
    problems = further_problems(config)
    errors = [p for p in problems if not p.warning]
    if errors:
        raise ConfigError(errors)
    return config, [p for p in problems if p.warning]


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
        spec = config.actions[action]
        if action in config.on_failure or action in (config.on_pause or ()):  # any event
            # may have a failed delivery, or an action that paused
            names = list(SAMPLES)
        tried = names or list(SAMPLES)
        failures = []
        for name in tried:
            result = preview_action(config, action, bodies[name], json.loads(bodies[name]))
            if result.error:
                failures.append((name, result))
        for n, result in failures if names else failures[:1] if len(failures) == len(tried) else []:
            where = f"actions.{action}" + (f".{result.option}" if result.option else "")
            line = spec.lines.get(result.option or "") or spec.lines.get("type")
            what = f"rendering against the {n} sample" if names else \
                "no sample routes to it and it renders against none of them"
            problems.append(Problem(where, f"{what}: {result.error}", line, str(config.file)))
    return problems


def status_problems(config: Config, seen: Iterable[str] | None = None) -> list[Problem]:
    """Rules on a plain ``status:`` value that matches no status the relay knows.

    Known: success and failure (what Suki documents) and any status the store has seen
    (``seen``; by default read from the store, and only when a rule names another status).
    A near miss of a known status (``sucess``) is an error; any other unknown value is a
    warning, since Suki's timeout and cancellation statuses are not documented and a rule
    for them must stay possible.
    """
    if seen is None:
        named = {status for rule in config.rules for status in rule.statuses or ()}
        seen = seen_statuses(config) if named - set(DOCUMENTED_STATUSES) else ()
    known = sorted({*DOCUMENTED_STATUSES, *seen})
    problems = []
    for rule in config.rules:
        for status in sorted(rule.statuses or ()):
            if status in known:
                continue
            close = difflib.get_close_matches(status, known, n=1, cutoff=0.8)
            where = f"rule {rule.name!r}.when.status"
            if close:
                problems.append(Problem(where, f"{status!r} is no status the relay knows; did you "
                                        f"mean {close[0]!r}?", rule.line, str(config.file)))
            else:
                problems.append(Problem(where, f"{status!r} is no status Suki is known to send "
                                        f"(known: {', '.join(known)}); right for an undocumented "
                                        "status such as a timeout, wrong if it is a typo",
                                        rule.line, str(config.file), warning=True))
    return problems


def seen_statuses(config: Config) -> set[str]:
    """Statuses the store has recorded lately; empty if it cannot be read (never created)."""
    from suki_relay.store import open_store, sqlite_path

    url = config.store_url
    path = sqlite_path(url, config.base_dir)
    if path is not None and not path.is_file():
        return set()
    try:
        store = open_store(url, config.base_dir)
    except RelayError:
        return set()
    try:
        return store.statuses(time.time() - SEEN_DAYS * 86400)
    except RelayError:
        return set()
    finally:
        store.close()
