"""on_failure: actions that run when a delivery fails for good."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from suki_relay.store import DeliveryRow
from suki_relay.testing import SECRET, Reply, Sink, unique_body, wait_until

from .conftest import FAST_DELIVERY, cli_here, http_action

ALERT_BODY = ('{"failed_action": {{ failed.action | json }}, "event_id": {{ event_id | json }}, '
              '"error": {{ failed.error | json }}, "attempts": {{ failed.attempts }}, '
              '"failed_delivery": {{ failed.delivery_id | json }}}')


def relay_with_alert(tmp_path: Path, local_relay: Any, target: Sink, alert: Sink) -> Any:
    config = {
        "receiver": {"secrets": [SECRET]}, "store": "sqlite:///relay.db",
        "delivery": dict(FAST_DELIVERY),
        "actions": {"forward": http_action(target.url),
                    "alert": http_action(alert.url, body=ALERT_BODY)},
        "rules": [{"name": "all", "do": ["forward"]}],
        "on_failure": ["alert"],
    }
    path = tmp_path / "actions.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return local_relay(path)


def deliveries(relay: Any, event_id: str) -> list[DeliveryRow]:
    detail = relay.store.event(event_id)
    assert detail is not None
    return [dd.delivery for dd in detail.deliveries]


def test_alert_names_the_failed_action_event_and_error(tmp_path: Path, sink: Any,
                                                       local_relay: Any) -> None:
    target = sink(Reply(422, b"no such patient"))
    alert = sink()
    app = relay_with_alert(tmp_path, local_relay, target, alert)
    event_id = app.accept(unique_body("failure"))

    wait_until(lambda: alert.received, message="the on_failure alert")
    got = alert.received[0].json()
    [failed] = [d for d in deliveries(app, event_id) if d.action == "forward"]
    assert got == {"failed_action": "forward", "event_id": event_id,
                   "error": "forward target answered 422", "attempts": 1,
                   "failed_delivery": failed.id}
    assert failed.state == "failed"
    wait_until(lambda: [d.state for d in deliveries(app, event_id) if d.action == "alert"]
               == ["done"], message="the alert recorded as done")
    shown = cli_here("show", event_id, cwd=tmp_path)
    assert "alert" in shown.stdout and "forward" in shown.stdout


def test_a_failing_alert_does_not_alert_again(tmp_path: Path, sink: Any,
                                              local_relay: Any) -> None:
    target = sink(Reply(400))
    alert = sink(Reply(400))
    app = relay_with_alert(tmp_path, local_relay, target, alert)
    event_id = app.accept(unique_body("failure"))

    def states() -> list[tuple[str, str]]:
        return sorted((d.action, d.state) for d in deliveries(app, event_id))

    wait_until(lambda: states() == [("alert", "failed"), ("forward", "failed")],
               message="both failed")
    assert len(alert.received) == 1
    assert len(app.store.deliveries(limit=100)) == 2  # no alert about the alert


def test_check_renders_on_failure_templates_with_failed(tmp_path: Path) -> None:
    config = {"receiver": {"secrets": [SECRET]},
              "actions": {"alert": {"type": "slack", "webhook_url": "http://127.0.0.1:9/x",
                                    "text": "{{ failed.action }} failed for {{ event_id }}: "
                                            "{{ failed.error }}"}},
              "on_failure": ["alert"]}
    (tmp_path / "actions.yaml").write_text(yaml.safe_dump(config))
    result = cli_here("check", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    config["on_failure"] = ["nope"]
    (tmp_path / "actions.yaml").write_text(yaml.safe_dump(config))
    result = cli_here("check", cwd=tmp_path)
    assert result.returncode == 1 and "on_failure: unknown action 'nope'" in result.stderr


def test_shipped_examples_pass_check(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The Slack and email on_failure examples in actions.yaml, uncommented, pass check."""
    lines = (Path(__file__).parent.parent / "actions.yaml").read_text().splitlines()
    out, inside = [], False
    for line in lines:
        if line.startswith(("  # alert-slack:", "  # alert-email:")):
            inside = True
        elif not line.startswith("  #   "):
            inside = False
        if inside or line.startswith("# on_failure:"):
            line = line.replace("# ", "", 1)
        out.append(line)
    assert out != lines
    (tmp_path / "templates").mkdir()
    (tmp_path / "actions.yaml").write_text("\n".join(out) + "\n")
    for name, value in {"SUKI_WEBHOOK_SECRET": "x", "SLACK_WEBHOOK_URL": "http://127.0.0.1:9/x",
                        "SMTP_PASSWORD": "pw"}.items():
        monkeypatch.setenv(name, value)
    result = cli_here("check", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "alert-slack" in (tmp_path / "actions.yaml").read_text()
