"""`suki-relay stand-in mllp`: an MLLP listener in the foreground that prints each HL7 v2
message it receives and answers as told, to try an ``hl7v2`` action without a hospital.
The listener is suki_relay.testing_mllp's, the one the tests use. (`stand-in suki` and
`stand-in fhir` are in standin_ehr.py.)"""

from __future__ import annotations

import argparse
import signal
import ssl
import sys
import threading

from suki_relay.errors import RelayError

CODES = ("AA", "AE", "AR", "CA", "CE", "CR")


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    stand_in = sub.add_parser("stand-in", help="stand-ins to try a config against").add_subparsers(
        dest="sub", required=True)
    from suki_relay.cli.standin_ehr import add_parsers as add_ehr_stand_ins

    add_ehr_stand_ins(stand_in)  # suki (Suki's API) and fhir (an EHR)
    sp = stand_in.add_parser("mllp", help="an MLLP listener that prints what it receives and "
                                          "answers as told (an interface engine stand-in)",
                             description=__doc__)
    sp.set_defaults(func=cmd_stand_in_mllp)
    sp.add_argument("-c", "--config", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    sp.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    sp.add_argument("--port", type=int, default=2575, help="port (default 2575)")
    sp.add_argument("--ack", choices=CODES, default="AA", help="MSA-1 of every answer (default AA)")
    sp.add_argument("--text", default="", help="MSA-3 text of every answer")
    sp.add_argument("--delay", type=float, default=0.0, help="seconds before each answer")
    sp.add_argument("--drop", action="store_true", help="close the connection after reading "
                                                        "each message, without answering")
    sp.add_argument("--silent", action="store_true", help="never answer")
    sp.add_argument("--wrong-control-id", action="store_true",
                    help="answer with an MSA-2 that names another message")
    sp.add_argument("--dedupe", action="store_true",
                    help="file a control id once, as a de-duplicating engine does")
    sp.add_argument("--quiet", action="store_true", help="one line per message, without "
                                                         "its segments")
    sp.add_argument("--tls-cert", help="serve TLS with this certificate (PEM)")
    sp.add_argument("--tls-key", help="its private key (PEM)")
    sp.add_argument("--tls-client-ca", help="require client certificates from this CA "
                                            "(mutual TLS)")


def cmd_stand_in_mllp(args: argparse.Namespace) -> int:
    try:
        from suki_relay.testing_mllp import Answer, MllpStandIn, Received
    except ImportError:  # pragma: no cover - the hl7 extra
        raise RelayError("the MLLP stand-in needs python-hl7: pip install "
                         "'suki-relay[hl7]'") from None
    answer = Answer(args.ack, text=args.text, delay=args.delay, drop=args.drop,
                    silent=args.silent, wrong_control_id=args.wrong_control_id)
    lock = threading.Lock()

    def show(got: Received) -> None:
        segments = [s for s in got.text.split("\r") if s.strip()]
        what = ("dropping the connection" if answer.drop else "not answering" if answer.silent
                else f"answering {answer.code}" + (" for another control id"
                                                    if answer.wrong_control_id else ""))
        with lock:
            print(f"--- received control id {got.control_id or '(none)'}, {len(segments)} "
                  f"segments; {what}", flush=True)
            if not args.quiet:
                for segment in segments:
                    print(segment, flush=True)

    try:
        listener = MllpStandIn(answer, host=args.host, port=args.port, context=_context(args),
                               dedupe=args.dedupe, lifetime=None, on_message=show)
    except OSError as exc:
        raise RelayError(f"cannot listen on {args.host}:{args.port} ({exc.strerror or exc})") \
            from None
    scheme = "mllps" if args.tls_cert else "mllp"
    print(f"MLLP stand-in listening on {scheme}://{args.host}:{listener.port}; answering "
          f"{args.ack}. Ctrl-C to stop.", file=sys.stderr, flush=True)
    # Ctrl-C and SIGTERM stop it, set here rather than left to Python's defaults: a process
    # started in the background by a shell (or a test run) inherits SIGINT ignored.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: listener.stopped.set())
    try:
        while not listener.stopped.wait(0.5):
            pass
    finally:
        listener.stop()
    print(f"received {len(listener.received)} message(s), filed {len(listener.filed)}",
          file=sys.stderr)
    return 0


def _context(args: argparse.Namespace) -> ssl.SSLContext | None:
    if not args.tls_cert:
        if args.tls_key or args.tls_client_ca:
            raise RelayError("--tls-key and --tls-client-ca need --tls-cert")
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        context.load_cert_chain(args.tls_cert, args.tls_key)
        if args.tls_client_ca:
            context.verify_mode = ssl.CERT_REQUIRED
            context.load_verify_locations(args.tls_client_ca)
    except (OSError, ssl.SSLError) as exc:
        raise RelayError(f"the TLS files cannot be used ({type(exc).__name__})") from None
    return context
