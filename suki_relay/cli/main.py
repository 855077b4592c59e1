"""The `suki-relay` command. User mistakes print cleanly and exit 1; usage errors exit 2."""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading
from pathlib import Path
from typing import Any

from suki_relay.cli.output import config_of, emit, table
from suki_relay.cli.spool import cmd_spool
from suki_relay.cli.standin import add_parser as add_stand_in
from suki_relay.cli.store import (
    cmd_actions,
    cmd_configs,
    cmd_deliveries,
    cmd_events,
    cmd_pause,
    cmd_prune,
    cmd_recover,
    cmd_replay,
    cmd_reroute,
    cmd_resolve,
    cmd_resume,
    cmd_show,
    store_of,
)
from suki_relay.errors import ConfigError, RelayError, StoreUnavailable


def _read_body(arg: str) -> bytes:
    from suki_relay.config.check import SAMPLES, sample

    path = Path(arg)
    if path.is_file():
        return path.read_bytes()
    if arg in SAMPLES:
        return sample(arg)
    raise RelayError(f"{arg}: no such file (or sample: {', '.join(SAMPLES)})")


# ---------------------------------------------------------------- commands (the
# store commands: cli_store.py)


def cmd_check(args: argparse.Namespace) -> int:
    from suki_relay.config.check import further_problems

    config = config_of(args)
    problems = further_problems(config)
    for p in problems:
        if p.warning:
            print(str(p), file=sys.stderr)
    if any(not p.warning for p in problems):
        raise ConfigError([p for p in problems if not p.warning])
    print(f"{config.file}: ok ({len(config.actions)} actions, {len(config.rules)} rules, "
          f"store {config.store_url.split('://')[0]})")
    return 0


def cmd_routes_test(args: argparse.Namespace) -> int:
    from suki_relay.config.check import dry_run, status_problems

    config = config_of(args)
    body = _read_body(args.file)
    statuses = status_problems(config)
    for problem in statuses:
        print(str(problem) if problem.warning else
              f"{problem.file}:{problem.line}: error: {problem.where}: {problem.message}",
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
        for rel, url in (p.fetch or {}).items():
            lines.append(f"  would fetch {rel}: GET {url} (not fetched in a dry run)")
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

    from suki_relay import protocol

    body = _read_body(args.file)
    secret = args.secret or os.environ.get("SUKI_WEBHOOK_SECRET")
    if not secret:
        secret = config_of(args).receiver.secrets[0]
    headers = protocol.signed_headers(secret, body)
    try:
        resp = requests.post(args.url, data=body, headers=headers, timeout=args.timeout)
    except requests.RequestException as exc:
        raise RelayError(f"could not reach {args.url}: {type(exc).__name__}") from None
    print(f"{resp.status_code} {resp.reason}")
    print(resp.text)
    return 0 if resp.ok else 1


def cmd_plugins(args: argparse.Namespace) -> int:
    from suki_relay.deliver.registry import discover

    if args.options:
        from suki_relay.config import reference
        from suki_relay.config.load import ACTION_OPTIONS

        found = reference.action_type(args.options)
        cls = found.cls
        data = {"type": found.name, "package": found.package, "version": found.version,
                "description": cls.description if cls else "",
                "options": [r.as_dict() for r in reference.rows(cls.options)] if cls else [],
                "every_action": [r.as_dict() for r in reference.rows(ACTION_OPTIONS)]}
        emit(args, data, reference.text_for_type(found))
        return 0
    types = discover()
    rows = [{"type": t.name, "package": t.package, "version": t.version, "object": t.value,
             "status": "ok" if t.cls else f"BROKEN: {t.error}"} for t in types.values()]
    rows.sort(key=lambda r: r["type"])
    emit(args, rows, table(rows, ["type", "package", "version", "object", "status"]))
    return 1 if any(not t.cls for t in types.values()) else 0


def cmd_schema(args: argparse.Namespace) -> int:
    from suki_relay.config.schema import dumps

    sys.stdout.write(dumps())
    return 0


def cmd_init(args: argparse.Namespace) -> int:
    from suki_relay.cli.init import write_starter

    folder = Path(args.dir)
    written = write_starter(folder, force=args.force)
    print("wrote " + ", ".join(str(p) for p in written))
    cd = f"cd {folder} && " if folder != Path(".") else ""
    print(f"next: {cd}export SUKI_WEBHOOK_SECRET=... (the secret Suki gave you), edit "
          "actions.yaml, then `suki-relay check` and `suki-relay serve`")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from suki_relay.config.check import further_problems

    config = config_of(args)  # a missing or broken config is reported here, as `check` does
    problems = further_problems(config)  # and what `check` calls an error stops it too
    if any(not p.warning for p in problems):
        raise ConfigError([p for p in problems if not p.warning])
    if args.log_format:
        os.environ["SUKI_RELAY_LOG_FORMAT"] = args.log_format
    if args.config:
        os.environ["SUKI_RELAY_CONFIG"] = str(Path(args.config).resolve())
    from suki_relay.serve.gunicorn import serve

    serve(args.config, {"bind": args.bind, "workers": args.workers, "threads": args.threads},
          checked=config.fingerprint, warnings=problems)
    return 0


def cmd_worker(args: argparse.Namespace) -> int:
    from suki_relay import logs, metrics
    from suki_relay.cli.spool import spool_of
    from suki_relay.deliver.deliverer import Deliverer
    from suki_relay.serve.assemble import background

    logs.setup(args.log_format)
    config = config_of(args)
    metrics.configure(config.metrics.enabled)
    with store_of(config, lazy=True) as store, spool_of(config) as spool:
        process = background(config, store, spool, Deliverer(config, store))
        process.log = True
        done = threading.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: done.set())
        process.start()
        print(f"suki-relay worker delivering from {config.store_url.split('://')[0]} store",
              file=sys.stderr)
        done.wait()
        process.stop()
    return 0


def cmd_keys_new(args: argparse.Namespace) -> int:
    """Write a private key for SMART Backend Services (0600) and print its public JWK Set."""
    from suki_relay.deliver import smart

    try:
        key = smart.write_new_key(Path(args.file), args.alg)
    except smart.KeyProblem as exc:
        raise RelayError(str(exc)) from None
    print(json.dumps(smart.jwk_set([key]), indent=2))
    print(f"wrote {args.file} (private, {args.alg}, kid {key.kid}): name it in auth.private_key_file; "
          "the relay publishes every configured key at /.well-known/jwks.json", file=sys.stderr)
    return 0


def cmd_console_password(args: argparse.Namespace) -> int:
    import getpass

    from suki_relay.console.auth import hash_password

    if args.stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        password = getpass.getpass("New console password: ")
        if getpass.getpass("Again: ") != password:
            raise RelayError("the two passwords differ")
    if len(password) < 12:
        raise RelayError("use at least 12 characters")
    print(hash_password(password))
    return 0


# ---------------------------------------------------------------- parser


LOG_FORMAT_HELP = "text (default) or json, one object a line; also $SUKI_RELAY_LOG_FORMAT"
LIMIT_HELP = "at most this many rows (default %(default)s)"


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
    sp.add_argument("--log-format", choices=("text", "json"), help=LOG_FORMAT_HELP)
    sp = add("worker", cmd_worker, "deliver only, without receiving")
    sp.add_argument("--log-format", choices=("text", "json"), help=LOG_FORMAT_HELP)
    add("check", cmd_check, "validate actions.yaml, plugins and templates")
    add("schema", cmd_schema, "print a JSON Schema of actions.yaml for editors (with the "
        "installed action types)")
    sp = add("init", cmd_init, "write a commented starter actions.yaml and templates folder")
    sp.add_argument("dir", nargs="?", default=".", help="where (default: here)")
    sp.add_argument("--force", action="store_true", help="replace an existing actions.yaml")
    routes = sub.add_parser("routes", help="routing tools").add_subparsers(dest="sub",
                                                                           required=True)
    sp = routes.add_parser("test", help="dry run: which rules match and what would be sent")
    sp.set_defaults(func=cmd_routes_test)
    sp.add_argument("file", help="a JSON body, or a sample name (success, failure, ...)")
    sp.add_argument("--expect", nargs="*", help="exit 1 unless exactly these rules/actions match")
    sp.add_argument("--json", action="store_true", help="JSON output, for scripts")
    sp.add_argument("-c", "--config", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    sp = add("send", cmd_send, "sign a body with the configured secret and POST it")
    sp.add_argument("file", help="a JSON body, or a sample name")
    sp.add_argument("--url", default="http://127.0.0.1:8000/webhooks/notification",
                    help="where to POST it (default: a relay on this machine, %(default)s)")
    sp.add_argument("--secret", help="the secret to sign with (default: $SUKI_WEBHOOK_SECRET, "
                                     "else the first of the config's receiver.secrets)")
    sp.add_argument("--timeout", type=float, default=10.0,
                    help="seconds to wait for the answer (default %(default)g)")
    sp = add("plugins", cmd_plugins, "list installed action types", json_flag=True)
    sp.add_argument("--options", metavar="TYPE",
                    help="the options of one action type: type, default, help")

    sp = add("events", cmd_events, "list received events, newest first", json_flag=True)
    sp.add_argument("--status", help="only events with this payload status (success, "
                                     "failure, ...)")
    sp.add_argument("--session", help="only events of this session id")
    sp.add_argument("--encounter", help="only events of this encounter id")
    sp.add_argument("--since", help="received since: 30m, 2h, 7d or ISO 8601")
    sp.add_argument("--until", help="received before: 30m, 2h, 7d or ISO 8601")
    sp.add_argument("--matched", action=argparse.BooleanOptionalAction, default=None,
                    help="only events a rule matched (--no-matched: only unmatched ones)")
    sp.add_argument("--malformed", action=argparse.BooleanOptionalAction, default=None,
                    help="only malformed events (signed, but not a JSON object with a status)")
    sp.add_argument("--recovered", action=argparse.BooleanOptionalAction, default=None,
                    help="only events recovered from Suki's status API (or none of them)")
    sp.add_argument("--rejected", action="store_true",
                    help="recent refused requests instead (time, reason, skew, address)")
    sp.add_argument("--limit", type=int, default=50, help=LIMIT_HELP)
    sp = add("spool", cmd_spool, "events waiting in this node's spool for the store, oldest "
             "first", json_flag=True)
    sp.add_argument("--limit", type=int, default=1000, help=LIMIT_HELP)
    sp = add("recover", cmd_recover, "ask Suki's API about sessions with no event, and "
             "record those that ended", json_flag=True)
    sp.add_argument("session_ids", nargs="*", metavar="SESSION_ID", help="Suki session ids")
    sp.add_argument("--encounter", help="the encounter these sessions belong to (default: "
                                        "from another event's sessions list)")
    sp.add_argument("--from-file", metavar="FILE", help="session ids, one per line (- for "
                                                        "stdin)")
    sp.add_argument("--dry-run", action="store_true", help="ask Suki, record nothing")
    sp = add("show", cmd_show, "one event, its deliveries and every attempt", json_flag=True)
    sp.add_argument("event_id", help="the event's id (evt_...)")
    sp.add_argument("--payload", action="store_true", help="also print the body (contains PHI)")
    sp = add("deliveries", cmd_deliveries, "list deliveries", json_flag=True)
    sp.add_argument("--state", choices=("pending", "in_flight", "done", "failed", "unknown"),
                    help="only deliveries in this state")
    sp.add_argument("--action", help="only deliveries of this action")
    sp.add_argument("--since", help="updated since: 30m, 2h, 7d or ISO 8601")
    sp.add_argument("--limit", type=int, default=100, help=LIMIT_HELP)
    sp = add("replay", cmd_replay, "run deliveries again (recorded as new attempts)",
             json_flag=True)
    sp.add_argument("event_id", nargs="?", help="replay this event's deliveries")
    sp.add_argument("--failed", action="store_true", help="only failed deliveries")
    sp.add_argument("--action", help="only this action")
    sp.add_argument("--since", help="with --failed: failed since (30m, 2h, 7d, ISO 8601)")
    sp.add_argument("--limit", type=int, default=10000, help=LIMIT_HELP)
    sp.add_argument("--dry-run", action="store_true",
                    help="list what would be replayed; replay nothing")
    sp = add("resolve", cmd_resolve, "settle a delivery whose outcome is unknown: --filed "
             "TYPE/ID (done) or --not-filed (send it)", json_flag=True)
    sp.add_argument("delivery_id", help="the delivery's id (dlv_...), as `deliveries --state "
                                        "unknown` lists it")
    sp.add_argument("--filed", metavar="TYPE/ID", help="what the target holds, e.g. "
                                                       "DocumentReference/123")
    sp.add_argument("--not-filed", action="store_true", help="it is not there: send it")
    sp = add("reroute", cmd_reroute, "match a stored event against the current rules",
             json_flag=True)
    sp.add_argument("event_id", help="the event's id (evt_...)")
    sp.add_argument("--dry-run", action="store_true",
                    help="show the rules that match now; plan nothing")
    sp = add("prune", cmd_prune, "delete old finished events (never unfinished ones)",
             json_flag=True)
    sp.add_argument("--older-than", help="e.g. 30d (default: retention.days from the config)")
    add("actions", cmd_actions, "each action: active or paused, deliveries queued, last "
        "success, last error", json_flag=True)
    sp = add("pause", cmd_pause, "pause an action by hand: its deliveries wait (nothing is "
             "lost) until `resume`")
    sp.add_argument("action", help="the action's name in actions.yaml")
    sp = add("resume", cmd_resume, "resume a paused action: its waiting deliveries are due now")
    sp.add_argument("action", help="the action's name in actions.yaml")
    add("configs", cmd_configs, "the config versions used (the version `show` names)",
        json_flag=True)
    add_stand_in(sub)
    keys = sub.add_parser("keys", help="signing keys (SMART Backend Services)").add_subparsers(
        dest="sub", required=True)
    sp = keys.add_parser("new", help="write a private key (0600) and print its public JWK Set")
    sp.set_defaults(func=cmd_keys_new)
    sp.add_argument("file", nargs="?", default="ehr-signing-key.pem",
                    help="where (default ehr-signing-key.pem; never overwritten)")
    sp.add_argument("--alg", choices=("RS384", "ES384"), default="ES384",
                    help="ES384 (an EC P-384 key, the default) or RS384 (RSA 3072)")
    sp.add_argument("-c", "--config", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    sp = add("console-password", cmd_console_password,
             "print a password hash for console.users (asks for the password)")
    sp.add_argument("--stdin", action="store_true", help="read the password from stdin")
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
