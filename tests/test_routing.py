"""Rule conditions and routing plans."""

from __future__ import annotations

import json

import pytest

from suki_relay.config.check import sample
from suki_relay.config.routing import Rule, compile_condition, route

SUCCESS = json.loads(sample("success"))
FAILURE = json.loads(sample("failure"))


def cond(when):  # type: ignore[no-untyped-def]
    errors: list[tuple[str, str]] = []
    test = compile_condition(when, "when", errors)
    assert not errors, errors
    return test


@pytest.mark.parametrize(
    "when, success, failure",
    [
        (None, True, True),
        ({}, True, True),
        ({"status": "success"}, True, False),
        ({"status": ["failure", "timeout"]}, False, True),
        ({"additional_info.specialty": ["family-medicine", "pediatrics"]}, True, False),
        ({"error_code": {"regex": "^ERROR_CODE_TRANS"}}, False, True),
        ({"error_code": {"exists": True}}, False, True),
        ({"error_code": {"exists": False}}, True, False),
        ({"status": {"not": "success"}}, False, True),
        ({"status": {"not": {"in": ["success", "failure"]}}}, False, False),
        ({"status": {"in": ["success"]}}, True, False),
        ({"sessions.1": "20965414-929a-4f71-a3e5-b92bec07d086"}, True, False),
        ({"any": [{"status": "failure"}, {"additional_info.specialty": "family-medicine"}]},
         True, True),
        ({"all": [{"status": "success"}, {"_links.contents": {"exists": True}}]}, True, False),
        ({"not": {"status": "success"}}, False, True),
        ({"status": "success", "error_code": {"exists": True}}, False, False),
    ],
)
def test_conditions(when, success: bool, failure: bool) -> None:  # type: ignore[no-untyped-def]
    test = cond(when)
    assert (test(SUCCESS), test(FAILURE)) == (success, failure)


def test_true_does_not_equal_one() -> None:
    assert not cond({"flag": True})({"flag": 1})
    assert cond({"flag": True})({"flag": True})


@pytest.mark.parametrize("when, fragment", [
    ({"status": {"regexp": "x"}}, "expected one operator"),
    ({"status": {"regex": "("}}, "invalid regex"),
    ({"status": {"exists": "yes"}}, "exists"),
    ({"any": "status"}, "non-empty list"),
    ("status == success", "expected a mapping"),
])
def test_bad_conditions_are_reported(when, fragment: str) -> None:  # type: ignore[no-untyped-def]
    errors: list[tuple[str, str]] = []
    compile_condition(when, "rule 'x'.when", errors)
    assert errors and fragment in errors[0][1]


def test_every_matching_rule_runs_until_stop() -> None:
    rules = [
        Rule("a", cond({"status": "failure"}), ["alert"]),
        Rule("b", cond({}), ["archive", "alert"], stop=True),
        Rule("c", cond({}), ["never"]),
    ]
    plan = route(rules, ["fallback"], FAILURE)
    assert plan.rules == ["a", "b"]
    assert plan.actions == ["alert", "archive"]


def test_unmatched_actions_run_only_when_nothing_matched() -> None:
    rules = [Rule("a", cond({"status": "failure"}), ["alert"])]
    assert route(rules, ["fallback"], SUCCESS).actions == ["fallback"]
    assert not route(rules, ["fallback"], SUCCESS).matched
    assert route(rules, [], SUCCESS).actions == []


def test_the_status_pre_check_agrees_with_the_condition() -> None:
    from suki_relay.config.routing import required_statuses

    for when in ({"status": "failure"}, {"status": ["failure", "timeout"]},
                 {"status": {"not": "success"}}, {"error_code": {"exists": True}}):
        rule = Rule("r", cond(when), ["a"], statuses=required_statuses(when))
        for payload in (SUCCESS, FAILURE, {"status": "timeout"}, {"status": 7}, {}):
            expected = cond(when)(payload)
            assert route([rule], [], payload).matched == expected, (when, payload)
