"""A worker imports what its config uses and nothing else: an action type, the console,
the authenticated EHR client, the SQL toolkit, recovery, tracing, the metrics library and
the template engine are loaded only by a config that turns them on (each absent part
holds no memory, and costs a new worker no start-up time)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from suki_relay.console.auth import hash_password

OPTIONAL = ("suki_relay.console.app", "suki_relay.actions.email", "suki_relay.actions.fhir",
            "suki_relay.actions.sql", "suki_relay.actions.slack", "suki_relay.actions.fetch_note",
            "suki_relay.actions.hl7v2", "suki_relay.deliver.oauth",
            "suki_relay.recover.recovery", "sqlalchemy", "prometheus_client", "smtplib",
            "opentelemetry.sdk.trace", "jinja2")

# a worker of `serve` (or plain gunicorn) builds its app this way; it prints the modules
# loaded afterwards, and stops its threads by exiting
PROBE = """
import json, os, sys
from suki_relay.serve.assemble import create_app
create_app(sys.argv[1])
print(json.dumps(sorted(sys.modules)))
sys.stdout.flush()
os._exit(0)
"""


def modules_after_start(tmp_path: Path, config: dict[str, Any]) -> set[str]:
    cfg = tmp_path / "actions.yaml"
    cfg.write_text(yaml.safe_dump(config))
    env = {k: v for k, v in os.environ.items() if k != "PROMETHEUS_MULTIPROC_DIR"
           and not k.startswith("OTEL_")}
    result = subprocess.run([sys.executable, "-c", PROBE, str(cfg)], capture_output=True,
                            text=True, timeout=120, env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    return set(json.loads(result.stdout))


def test_a_config_with_everything_off_imports_none_of_the_optional_parts(tmp_path: Path) -> None:
    loaded = modules_after_start(tmp_path, {
        "receiver": {"secrets": ["s"]}, "metrics": {"enabled": False},
        "actions": {"fwd": {"type": "http", "url": "http://127.0.0.1:9/"}},
        "rules": [{"name": "all", "do": ["fwd"]}]})
    assert "suki_relay.actions.http" in loaded  # the probe saw the app built
    assert sorted(m for m in OPTIONAL if m in loaded) == []


def test_each_part_a_config_turns_on_is_imported(tmp_path: Path) -> None:
    """The other side of the test above: the probe does see optional parts when used."""
    loaded = modules_after_start(tmp_path, {
        "receiver": {"secrets": ["s"]},
        "console": {"enabled": True, "users": {"admin": hash_password("long enough pass")}},
        "suki": {"base_url": "http://127.0.0.1:9", "partner_id": "p", "partner_token": "t"},
        "tracing": {"enabled": True, "endpoint": "http://127.0.0.1:9/v1/traces"},
        "actions": {
            "mail": {"type": "email", "to": ["a@example.org"], "from": "r@example.org",
                     "smtp": {"host": "127.0.0.1"}},
            "chat": {"type": "slack", "webhook_url": "http://127.0.0.1:9/x"},
            "save": {"type": "fetch_note", "directory": "notes"},
            "ehr": {"type": "fhir", "base_url": "http://127.0.0.1:9/fhir",
                    "subject": "Patient/1",
                    "auth": {"token_url": "http://127.0.0.1:9/token", "client_id": "c",
                             "client_secret": "s"}},
            "db": {"type": "sql", "url": "sqlite:///rows.db",
                   "statement": "INSERT INTO t VALUES (:s)",
                   "params": {"s": "{{ event.session_id }}"}},
            "engine": {"type": "hl7v2", "host": "127.0.0.1", "port": 9,
                       "patient_id": ["{{ event.session_id }}"]}},
        "rules": [{"name": "all", "do": ["mail", "chat", "db"]},
                  {"name": "notes", "when": {"status": "success"},
                   "do": ["save", "ehr", "engine"]}]})
    assert sorted(m for m in OPTIONAL if m not in loaded) == []
