"""The slack action against a local server standing in for Slack's webhook endpoint."""

from __future__ import annotations

from pathlib import Path

import pytest

from suki_relay.errors import PermanentError, RetryableError
from suki_relay.testing import Reply, Sink, build_action, make_delivery

EVIL = {"status": "failure", "session_id": "s-1", "encounter_id": "e-1",
        "error_code": "E", "error_detail": "<!channel> see <http://evil.example|here> & run"}


def test_posts_text_and_blocks_with_payload_values_escaped(tmp_path: Path) -> None:
    with Sink() as slack:
        action = build_action("slack", {
            "webhook_url": slack.url + "/services/T/B/X",
            "text": "<!here> Session {{ event.session_id }}: {{ event.error_detail }}",
            "blocks": [{"type": "section",
                        "text": {"type": "mrkdwn", "text": "*{{ event.error_code }}*"}}],
            "username": "suki-relay", "icon_emoji": ":hospital:",
        }, tmp_path)
        assert action.deliver(make_delivery(EVIL)) == "posted"
        sent = slack.received[0].json()
    # what the template wrote is kept (<!here>); what the payload carried is escaped
    assert sent["text"] == ("<!here> Session s-1: &lt;!channel&gt; see "
                            "&lt;http://evil.example|here&gt; &amp; run")
    assert sent["blocks"][0]["text"]["text"] == "*E*"
    assert sent["username"] == "suki-relay" and sent["icon_emoji"] == ":hospital:"
    assert slack.received[0].path == "/services/T/B/X"


@pytest.mark.parametrize("reply, error, fragment", [
    (Reply(400, b"invalid_payload"), PermanentError, "400: invalid_payload"),
    (Reply(404, b"no_service"), PermanentError, "404: no_service"),
    (Reply(429, b"rate_limited", {"Retry-After": "30"}), RetryableError, "429"),
    (Reply(503, b"oops"), RetryableError, "503"),
])
def test_slack_answers_decide_retry(tmp_path: Path, reply: Reply, error: type,
                                    fragment: str) -> None:
    with Sink(default=reply) as slack:
        action = build_action("slack", {"webhook_url": slack.url}, tmp_path)
        with pytest.raises(error, match=fragment) as info:
            action.deliver(make_delivery("failure"))
    if reply.status == 429:
        assert info.value.retry_after == 30  # type: ignore[attr-defined]
    assert slack.url not in str(info.value)  # the webhook URL is a secret


def test_dry_run_masks_the_webhook_url(tmp_path: Path) -> None:
    action = build_action("slack", {"webhook_url": "https://hooks.slack.com/services/SECRET"},
                          tmp_path)
    delivery = make_delivery("failure")
    preview = action.preview(delivery)
    assert "SECRET" not in str(preview)
    assert preview["webhook_url"] == "***"  # shown, masked
    assert preview["json"] == action.payload(delivery)  # and what would be sent, whole
    assert "failure" in preview["json"]["text"]
