"""`suki-relay stand-in suki` and `stand-in fhir`: the stand-ins the tests use, run in the foreground until
stopped (Ctrl-C or SIGTERM), printing what to put in actions.yaml. For trying the relay
without Suki's API or an EHR; they listen on 127.0.0.1 only."""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from typing import Any

import yaml

SAMPLE_PATIENT = "example-patient-1"  # the success sample's additional_info.patient_id
SAMPLE_ENCOUNTER = "29de56bc-960a-4cd5-b18f-79a798d62874"  # and its encounter_id


def _stop_event() -> threading.Event:
    """Set on SIGTERM or SIGINT (Ctrl-C)."""
    done = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: done.set())
    return done


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError("expected a whole number, 0 or more")
    return value


def _section(data: dict[str, Any]) -> str:
    return yaml.safe_dump(data, sort_keys=False, width=100).rstrip()


def cmd_stand_in_suki(args: argparse.Namespace) -> int:
    from suki_relay.testing_servers import SukiStandIn

    standin = SukiStandIn(lifetime=None, port=args.port)
    try:
        print(f"Suki API stand-in at {standin.url} (until Ctrl-C). Any session has the sample "
              "note as its content and status completed. In actions.yaml:\n")
        print(_section({"suki": standin.settings()}), flush=True)
        _stop_event().wait()
    finally:
        standin.stop()
    return 0


def cmd_stand_in_fhir(args: argparse.Namespace) -> int:
    from suki_relay.testing_fhir import CLIENT_ID, FhirStandIn

    standin = FhirStandIn(args.profile, lifetime=None, port=args.port, jwks_url=args.jwks_url,
                          capability_bytes=args.capability_bytes, page_size=args.page_size)
    standin.add_encounter(SAMPLE_ENCOUNTER, SAMPLE_PATIENT)
    for pair in args.encounter or []:
        encounter, _, patient = pair.partition("=")
        standin.add_encounter(encounter, patient)
    action: dict[str, Any] = {"type": "fhir", "base_url": standin.base_url,
                              "profile": args.profile,
                              "subject": "Patient/{{ event.additional_info.patient_id }}"}
    if args.profile == "generic":
        action["auth"] = standin.oauth()
    else:
        action["encounter"] = "Encounter/{{ event.encounter_id }}"
        action["auth"] = standin.smart("ehr-key.pem")
        if args.profile == "oracle":
            action["period"] = {"end": "{{ received_at }}"}
    try:
        print(f"FHIR stand-in ({args.profile}) at {standin.base_url}, token endpoint "
              f"{standin.token_url} (until Ctrl-C)." + (
                  "" if standin.validator else " fhir.resources is not installed: resources "
                  "are not validated (pip install 'suki-relay[dev]')."))
        if args.profile != "generic":
            print(f"It registers client {CLIENT_ID} by its JWK Set URL {args.jwks_url}; make "
                  "the key with `suki-relay keys new ehr-key.pem` next to actions.yaml.")
        print(f"Encounters it knows: {', '.join(f'{e} (Patient/{p})' for e, p in standin.encounters.items())}"
              "\nIn actions.yaml:\n")
        print(_section({"actions": {"note-to-ehr": action}}), flush=True)
        seen = 0
        done = _stop_event()
        while not done.wait(0.5):
            with standin._lock:
                filed = list(standin.documents.values())[seen:]
                refused = list(standin.refused)
            for doc in filed:
                print(f"filed DocumentReference/{doc['id']} for {doc['subject']['reference']}",
                      flush=True)
            seen += len(filed)
            if refused:
                with standin._lock:
                    standin.refused.clear()
                for status, why in refused:
                    print(f"refused a create ({status}): {why}", file=sys.stderr, flush=True)
    finally:
        standin.stop()
    return 0


def add_parsers(stand_in: Any) -> None:
    """`stand-in suki` and `stand-in fhir`, under the `stand-in` command (standin.py)."""
    sp = stand_in.add_parser("suki", help="Suki's API (login, content, status) until stopped",
                             description=__doc__)
    sp.set_defaults(func=cmd_stand_in_suki)
    sp.add_argument("--port", type=int, default=0, help="default: any free port")
    sp.add_argument("-c", "--config", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    sp = stand_in.add_parser("fhir", help="a FHIR server that behaves as an EHR (generic, epic, "
                                          "oracle) until stopped", description=__doc__)
    sp.set_defaults(func=cmd_stand_in_fhir)
    sp.add_argument("--profile", choices=("generic", "epic", "oracle"), default="generic",
                    help="which EHR it behaves as (default generic)")
    sp.add_argument("--port", type=int, default=0, help="default: any free port")
    sp.add_argument("--jwks-url", default="http://127.0.0.1:8000/.well-known/jwks.json",
                    help="epic/oracle: the relay's JWK Set URL (default: a relay served on "
                         "127.0.0.1:8000)")
    sp.add_argument("--encounter", action="append", metavar="ENCOUNTER=PATIENT",
                    help="another encounter it knows, with its patient")
    sp.add_argument("--capability-bytes", type=_count, default=0, metavar="BYTES",
                    help="list this many bytes of other resources in GET /metadata, as a "
                         "large EHR's CapabilityStatement does (default 0)")
    sp.add_argument("--page-size", type=_count, default=0, metavar="N",
                    help="answer a search N documents a page, newest first, with a next "
                         "link (default 0: every match on one page)")
    sp.add_argument("-c", "--config", default=argparse.SUPPRESS, help=argparse.SUPPRESS)


__all__ = ["add_parsers", "cmd_stand_in_fhir", "cmd_stand_in_suki"]
