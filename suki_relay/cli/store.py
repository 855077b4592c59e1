"""The operator's commands over the store (events, show, deliveries, replay, reroute,
prune), and the output helpers every command shares. --json prints the typed rows as
they are (``dataclasses.asdict``) plus the display columns the table shows.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from suki_relay.cli.output import (
    _indent,
    _when,
    config_of,
    emit,
    event_head,
    payload_text,
    store_settings,
    table,
)
from suki_relay.errors import RelayError
from suki_relay.store.rows import parse_since

if TYPE_CHECKING:
    from suki_relay.store import Store

ERROR_MAX = 500  # errors are stored up to this long; `show` prints them whole

# ---------------------------------------------------------------- the store


@contextmanager
def store_of(config: Any, lazy: bool = False) -> Iterator[Store]:
    """The configured store, closed when the command is done. ``lazy``: a PostgreSQL store
    that cannot connect now opens anyway (for `worker`, which must start, and move its
    node's spool, once the database is back)."""
    from suki_relay.store import open_store

    store = open_store(config.store_url, config.base_dir, lazy=lazy)
    try:
        yield store
    finally:
        store.close()


def cmd_events(args: argparse.Namespace) -> int:
    from suki_relay.store import EventFilter

    if args.rejected:
        return _rejected(args)
    f = EventFilter(status=args.status, session_id=args.session, encounter_id=args.encounter,
                    since=parse_since(args.since), until=parse_since(args.until),
                    matched=args.matched, malformed=args.malformed, recovered=args.recovered,
                    limit=args.limit)
    from suki_relay.cli.spool import spool_note
    from suki_relay.store import StoreUnavailable

    config = store_settings(args)
    note = spool_note(config)
    if note:
        print(note, file=sys.stderr)
    try:
        with store_of(config) as store:
            events = store.events(f)
    except StoreUnavailable as exc:
        raise RelayError(f"the store is unavailable ({exc})") from None
    rows = []
    for e in events:
        r = asdict(e)
        r["received"] = _when(e.received_at)
        r["deliveries"] = " ".join(f"{k}={v}" for k, v in sorted(e.deliveries.items())) or \
            ("unmatched" if not e.matched else "-")
        r["status"] = "MALFORMED" if e.malformed else e.status
        r["via"] = "recovered" if e.recovered else "webhook"
        rows.append(r)
    emit(args, rows, table(rows, ["id", "received", "status", "via", "session_id",
                                  "encounter_id", "deliveries"]))
    return 0


def _rejected(args: argparse.Namespace) -> int:
    """`events --rejected`: recent refused requests (no body was ever kept)."""
    with store_of(store_settings(args)) as store:
        found = store.rejections(since=parse_since(args.since), limit=args.limit)
    rows = [{**asdict(r), "last": _when(r.last_at), "first": _when(r.first_at),
             "remote": r.remote_addr, "status": r.http_status} for r in found]
    emit(args, rows, table(rows, ["last", "reason", "status", "skew_ms", "remote", "count",
                                  "first"]))
    return 0


def cmd_recover(args: argparse.Namespace) -> int:
    """Ask Suki about sessions the relay has no event for; exit 1 only if Suki could not
    be asked about one of them."""
    from suki_relay.recover.recovery import Recoverer, header

    config = config_of(args)
    if config.suki is None:
        raise RelayError("recover needs the suki: section (base_url, partner_id, "
                         "partner_token) in the config")
    sessions = list(args.session_ids)
    if args.from_file:
        sessions += _session_list(args.from_file)
    if not sessions:
        raise RelayError("give SESSION_ID... or --from-file FILE")
    results = []
    sessions = list(dict.fromkeys(sessions))
    width = min(max(map(len, sessions)), 80)  # columns aligned as the rows come
    if not args.json:
        print(header(width), flush=True)
    with store_of(config) as store:
        recoverer = Recoverer(config, store, announce=False)  # the rows say it, once
        for sid in sessions:
            result = recoverer.recover(sid, encounter_id=args.encounter, dry_run=args.dry_run)
            results.append(result)
            if not args.json:
                print(result.line(width), flush=True)
    if args.json:
        print(json.dumps([asdict(r) for r in results], indent=2))
    return 0 if all(r.asked_suki for r in results) else 1


def _session_list(path: str) -> list[str]:
    """Session ids from a file (or - for stdin): whitespace or commas between them, # for
    comments."""
    try:
        text = sys.stdin.read() if path == "-" else Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise RelayError(f"{path}: {exc.strerror}") from None
    ids: list[str] = []
    for line in text.splitlines():
        ids += line.split("#", 1)[0].replace(",", " ").split()
    return ids


def cmd_show(args: argparse.Namespace) -> int:
    from suki_relay.cli.spool import show_spooled
    from suki_relay.store import StoreUnavailable

    config = store_settings(args)
    try:
        with store_of(config) as store:
            detail = store.event(args.event_id)
    except StoreUnavailable as exc:
        if show_spooled(args, config, args.event_id):
            return 0
        raise RelayError(f"the store is unavailable ({exc}) and this node's spool has no "
                         f"event {args.event_id}") from None
    if detail is None:
        if show_spooled(args, config, args.event_id):
            return 0
        raise RelayError(f"no event {args.event_id}")
    e = detail.event
    lines = event_head(e.id, e.received_at, None if e.malformed else e.status, e.session_id,
                       e.encounter_id, "  (recovered from Suki's status API)"
                       if e.recovered else "")
    routed_by = f"config {e.config_version}" if e.config_version else \
        "recovered" if e.recovered else "config unknown"
    lines.append(f"rules matched: {', '.join(e.rules) or '(none)'}  ({routed_by})")
    data = {k: v for k, v in asdict(e).items() if k != "deliveries"}
    data["delivery_list"] = []
    for dd in detail.deliveries:
        d = dd.delivery
        lines.append(f"\ndelivery {d.id}  action {d.action}  state {d.state}  "
                     f"attempts {d.attempts}" + (f"  next {_when(d.next_attempt_at)}"
                                                 if d.state == "pending" else ""))
        attempts = [{**asdict(a), "started": _when(a.started_at),
                     "ms": round(a.duration * 1000, 1)} for a in dd.attempts]
        if attempts:
            lines.append(_indent(table(attempts, ["attempt", "started", "outcome", "http_status",
                                                  "ms", "error", "note"], limit=ERROR_MAX)))
        data["delivery_list"].append({**asdict(d), "attempt_list": attempts})
    if args.payload:
        data["payload"] = detail.body.decode("utf-8", "replace")
        lines.append(payload_text(data["payload"]))
    emit(args, data, "\n".join(lines))
    return 0


def cmd_deliveries(args: argparse.Namespace) -> int:
    with store_of(store_settings(args)) as store:
        found = store.deliveries(state=args.state, action=args.action,
                                 since=parse_since(args.since), limit=args.limit)
    rows = [{**asdict(d), "updated": _when(d.updated_at)} for d in found]
    emit(args, rows, table(rows, ["id", "event_id", "action", "state", "attempts", "updated",
                                  "last_error"]))
    return 0


def cmd_resolve(args: argparse.Namespace) -> int:
    """Settle a delivery whose outcome is unknown (state ``unknown``)."""
    import getpass
    import re

    if (args.filed is None) == (not args.not_filed):
        raise RelayError("give --filed TYPE/ID (what the target holds) or --not-filed")
    if args.filed is not None and not re.fullmatch(r"[A-Z][A-Za-z]{1,63}/[A-Za-z0-9\-.]{1,64}",
                                                   args.filed):
        raise RelayError("--filed: expected a reference such as DocumentReference/123")
    with store_of(store_settings(args)) as store:
        state = store.resolve(args.delivery_id, args.filed, f"{getpass.getuser()} (cli)")
    if state is None:
        raise RelayError(f"delivery {args.delivery_id} is not in state unknown (see "
                         "`suki-relay deliveries --state unknown`)")
    emit(args, {"id": args.delivery_id, "state": state},
         f"delivery {args.delivery_id}: " + (f"done (filed {args.filed})" if args.filed else
                                              "pending: running workers send it now"))
    return 0


def cmd_replay(args: argparse.Namespace) -> int:
    from suki_relay.recover import repair

    with store_of(store_settings(args)) as store:
        if args.event_id:
            chosen = repair.event_deliveries(store, args.event_id, failed_only=args.failed,
                                             action=args.action)
        elif args.failed:
            chosen = repair.failed_deliveries(store, since=parse_since(args.since),
                                              action=args.action, limit=args.limit)
        else:
            raise RelayError("give an EVENT_ID, or --failed for every failed delivery")
        rows = [{"id": d.id, "event_id": d.event_id, "action": d.action, "state": d.state}
                for d in chosen]
        if args.dry_run:
            emit(args, rows, f"would replay {len(rows)} deliveries\n" + table(
                rows, ["id", "event_id", "action", "state"]))
            return 0
        n = repair.replay(store, chosen)
    emit(args, rows, f"replaying {n} deliveries (running workers pick them up now)")
    return 0


def cmd_reroute(args: argparse.Namespace) -> int:
    from suki_relay.recover import repair

    config = config_of(args)
    with store_of(config) as store:
        plan = (repair.plan_reroute if args.dry_run else repair.reroute)(config, store,
                                                                         args.event_id)
    data = {"rules": plan.rules, "new_actions": plan.new_actions,
            "existing_actions": plan.existing_actions}
    verb = "would plan" if args.dry_run else "planned"
    emit(args, data, f"rules matched: {', '.join(plan.rules) or '(none)'}\n"
                     f"{verb} {len(plan.new_actions)} new deliveries: "
                     f"{', '.join(plan.new_actions) or '-'}")
    return 0


def cmd_actions(args: argparse.Namespace) -> int:
    """Each action of the config (and any other the store knows): its state, its queue,
    its last success and its last error."""
    config = config_of(args)
    with store_of(config) as store:
        known = {s.action: s for s in store.action_states()}
    rows = []
    for name in [*config.actions, *sorted(set(known) - set(config.actions))]:
        s = known.get(name)
        state = "active" if s is None else s.state
        if s is not None and s.state == "paused":
            state = "paused by hand" if s.by_hand else f"paused (probe {_when(s.probe_at)})"
        spec = config.actions.get(name)
        rows.append({"action": name, "type": spec.type if spec else "(not in the config)",
                     "state": state, "paused": bool(s and s.state == "paused"),
                     "queued": s.queued if s else 0, "failures_in_a_row": s.failures if s else 0,
                     "last_success": _when(s.last_success_at if s else None),
                     "last_error_at": _when(s.last_error_at if s else None),
                     "last_error": s.last_error if s else None})
    emit(args, rows, table(rows, ["action", "type", "state", "queued", "last_success",
                                  "last_error_at", "last_error"]))
    return 0


def cmd_pause(args: argparse.Namespace) -> int:
    """Pause an action by hand: its deliveries wait (no probes) until `resume`."""
    return _pause_or_resume(args, pause=True)


def cmd_resume(args: argparse.Namespace) -> int:
    """Resume a paused action: its waiting deliveries are due now."""
    return _pause_or_resume(args, pause=False)


_SAID = {  # pause?: (what changed, what was so already)
    True: ("paused; its deliveries wait until `suki-relay resume {action}`",
           "was paused by hand already"),
    False: ("resumed; its waiting deliveries are due now", "was not paused"),
}


def _pause_or_resume(args: argparse.Namespace, pause: bool) -> int:
    config = config_of(args)
    _known_action(config, args.action)
    with store_of(config) as store:
        changed = (store.pause if pause else store.resume)(args.action)
    done, already = _SAID[pause]
    print(f"{args.action}: " + (done if changed else already).format(action=args.action))
    return 0


def _known_action(config: Any, name: str) -> None:
    if name not in config.actions:
        raise RelayError(f"no action {name!r} in {config.file}; defined: "
                         f"{', '.join(config.actions) or 'none'}")


def cmd_configs(args: argparse.Namespace) -> int:
    """The audit trail: every config version used, and where and when it was first."""
    with store_of(store_settings(args)) as store:
        found = store.config_versions()
    rows = [{**asdict(c), "first_used": _when(c.first_used_at)} for c in found]
    emit(args, rows, table(rows, ["version", "first_used", "host", "file"]))
    return 0


def cmd_prune(args: argparse.Namespace) -> int:
    config = config_of(args)
    older = args.older_than or (f"{config.retention_days:g}d" if config.retention_days else None)
    if older is None:
        raise RelayError("give --older-than (e.g. 30d) or set retention.days in the config")
    from suki_relay.store.retention import prune

    asked = parse_since(older)
    assert asked is not None
    with store_of(config) as store:
        n, before = prune(store, config, asked)
    kept = "" if before >= asked else (" (events inside the replay window are kept: "
                                       "twice receiver.tolerance_seconds plus a minute)")
    emit(args, {"deleted_events": n, "before": before},
         f"deleted {n} finished events received before {_when(before)}{kept}")
    return 0
