"""console.users with roles, and the overview's charts, apart from a browser (the browser
test, tests/system/test_console_operate.py, signs in with each role)."""

from __future__ import annotations

import re
import time
from pathlib import Path

from suki_relay.console.auth import hash_password
from suki_relay.console.charts import HOURS, charts
from suki_relay.store.rows import Activity

from .conftest import check_fails

HASH = hash_password("a long enough password")


def test_a_role_must_be_known_and_a_bare_hash_stays_an_admin(tmp_path: Path) -> None:
    from suki_relay.config.load import parse_config

    base = "receiver: {secrets: [s]}\nconsole:\n  enabled: true\n  users:\n"
    report = check_fails(tmp_path, base + f"    vic: {{hash: '{HASH}', role: root}}\n")
    assert "role must be one of viewer, operator, admin" in report and HASH not in report
    report = check_fails(tmp_path, base + f"    vic: {{hash: '{HASH}', rol: viewer}}\n")
    assert "unknown key(s) rol" in report
    config = parse_config(base + f"    ops: '{HASH}'\n    vic: {{hash: '{HASH}', role: viewer}}\n",
                          tmp_path / "actions.yaml")
    users = config.console.users
    assert (users["ops"].role, users["vic"].role) == ("admin", "viewer")
    assert HASH not in repr(config.console)


def test_charts_draw_a_bar_for_each_hour_with_something_in_it() -> None:
    now = 1_800_000_000.0 + 1800  # half past an hour
    hours_ago = (0, 0, 2, 7, 23)
    activity = Activity(accepted=[now - h * 3600 for h in hours_ago],
                        done=[(now - 60, now - 120), (now - 3600, now - 3610)],
                        failed=[now - 5 * 3600], refused=[(now - 10, 4), (now - 30 * 3600, 9)])
    accepted, delivered, refused, latency = charts(activity, now)

    def bars(svg: str, name: str = "") -> int:
        return len(re.findall(rf'<rect class="bar bar-{name}', svg))

    assert bars(accepted.svg) == 4 and accepted.total == "5"  # hours 0, 2, 7 and 23 ago
    assert (bars(delivered.svg, "delivered"), bars(delivered.svg, "failed")) == (2, 1)
    assert bars(refused.svg) == 1 and refused.total == "4"  # the older one is past 24 h
    assert bars(latency.svg, "p50") == 2 and "p95" in latency.total
    assert "<script" not in accepted.svg and "style=" not in accepted.svg  # the CSP holds
    assert HOURS == 24 and time.gmtime(now).tm_min == 30
