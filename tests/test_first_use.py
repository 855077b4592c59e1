"""What a new user ran into: every option explained by --help, a misspelt action key
named, a refusal for a wrong secret said loudly and plainly."""

from __future__ import annotations

import argparse
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from suki_relay import protocol
from suki_relay.cli.main import parser
from suki_relay.testing import unique_body

from .conftest import check_fails


def _options(p: argparse.ArgumentParser, name: str) -> Iterator[tuple[str, argparse.Action]]:
    for action in p._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub, sp in action.choices.items():
                yield from _options(sp, f"{name} {sub}")
        elif action.dest != "help" and action.help != argparse.SUPPRESS:
            yield name, action


def test_every_option_of_every_command_has_a_help_text() -> None:
    missing = [f"{name} {'/'.join(a.option_strings) or a.dest}"
               for name, a in _options(parser(), "suki-relay") if not a.help]
    assert missing == []
    shown = parser().parse_args(["send", "success"])
    assert shown.timeout == 10.0  # the defaults the texts name


def test_a_misspelt_action_key_is_named_with_what_it_likely_meant(tmp_path: Path) -> None:
    report = check_fails(tmp_path, "receiver: {secrets: [s]}\n"
                                   "actions:\n  ehr:\n    tyep: http\n    url: http://127.0.0.1:9/\n"
                                   "rules: [{name: all, do: [ehr]}]\n")
    assert "actions.ehr.tyep: unknown option; did you mean 'type'?" in report
    assert "actions.yaml:4" in report


def test_an_unknown_key_elsewhere_gets_did_you_mean_too(tmp_path: Path) -> None:
    report = check_fails(tmp_path, "receiver: {secrets: [s], tolerance_second: 5}\n")
    assert "receiver.tolerance_second: unknown option; did you mean 'tolerance_seconds'?" \
        in report


class Levels(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
def receiver_log() -> Iterator[Levels]:
    logger, handler = logging.getLogger("suki_relay.receiver"), Levels()
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    yield handler
    logger.removeHandler(handler)
    logger.setLevel(level)


@pytest.mark.parametrize("store_url", ["sqlite"], indirect=True)
def test_a_refusal_is_a_warning_that_names_the_likely_wrong_secret(
        write_config: Any, local_relay: Any, receiver_log: Levels) -> None:
    relay = local_relay(write_config(), deliver=False)
    body = unique_body()
    wrong = relay.post(body, protocol.signed_headers("not-the-secret", body))
    assert wrong.status_code == 401
    no_header = relay.post(body, {"Content-Type": "application/json"})
    assert no_header.status_code == 401
    relay.accept(unique_body())
    by_outcome = {r.fields["outcome"]: r for r in receiver_log.records  # type: ignore[attr-defined]
                  if "outcome" in getattr(r, "fields", {})}
    bad = by_outcome["bad_signature"]
    assert bad.levelno == logging.WARNING
    assert "the secret may not match Suki's" in bad.getMessage()
    assert by_outcome["missing_generated_at"].levelno == logging.WARNING
    assert by_outcome["missing_generated_at"].getMessage() == "request refused"
    assert by_outcome["accepted"].levelno == logging.INFO
    assert "not-the-secret" not in "".join(r.getMessage() + str(r.__dict__)
                                           for r in receiver_log.records)
