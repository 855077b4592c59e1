"""Which config routed each event: versions recorded in the store, named by `show`,
listed by `configs` (both backends)."""

from __future__ import annotations

import json

import pytest

from suki_relay.cli.main import main
from suki_relay.serve.config_state import version
from suki_relay.testing import unique_body


def test_each_event_names_the_config_that_routed_it(write_config, local_relay, capsys) -> None:  # type: ignore[no-untyped-def]
    cfg = write_config({"actions": {"a": {"type": "http", "url": "http://127.0.0.1:9/"}},
                        "rules": [{"name": "all", "do": ["a"]}]})
    first = version(cfg.read_text())
    relay = local_relay(cfg, deliver=False)
    before = relay.accept(unique_body())
    relay.stop()
    cfg.write_text(cfg.read_text() + "# an edit\n")
    second = version(cfg.read_text())
    relay = local_relay(cfg, deliver=False)
    after = relay.accept(unique_body())

    assert relay.store.event(before).event.config_version == first  # type: ignore[union-attr]
    assert relay.store.event(after).event.config_version == second  # type: ignore[union-attr]
    assert [c.version for c in relay.store.config_versions()] == [first, second]

    assert main(["-c", str(cfg), "show", after]) == 0
    assert f"(config {second})" in capsys.readouterr().out
    assert main(["-c", str(cfg), "configs", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [c["version"] for c in listed] == [first, second]
    assert all(c["file"] == str(cfg) for c in listed)


@pytest.mark.parametrize("store_url", ["sqlite"], indirect=True)
def test_the_version_is_the_sha256_of_the_file(write_config) -> None:  # type: ignore[no-untyped-def]
    import hashlib

    cfg = write_config()
    assert version(cfg.read_text()) == hashlib.sha256(cfg.read_bytes()).hexdigest()[:12]
