"""What a template in actions.yaml can see and do, rendered as deliveries render it."""

from __future__ import annotations

from typing import Any

import jinja2
import pytest
from jinja2.sandbox import SecurityError

from suki_relay.deliver.templates import Templates, render_value

PAYLOAD = {"status": "failure", "session_id": "s-1", "items": ["a", "b"],
           "additional_info": {"specialty": "pediatrics"}}
CONTEXT = {"event": PAYLOAD, "event_id": "evt_1", "received_at": "2026-01-01T00:00:00Z",
           "delivery_id": "dlv_1", "attempt": 1}


def render(source: Any) -> Any:
    return render_value(Templates().compile_value(source), CONTEXT)


def test_payload_fields_by_attribute_and_by_key() -> None:
    assert render("{{ event.status }}/{{ event['session_id'] }}/{{ event_id }}") == \
        "failure/s-1/evt_1"
    assert render("{{ event.additional_info.specialty }}") == "pediatrics"
    # a key named like a dict method: Jinja's rule (attribute first) still holds
    assert render("{{ event['items'] | join(',') }}") == "a,b"
    assert render("{{ event.items() | list | length }}") == "4"


def test_a_structure_renders_every_string_and_keeps_the_rest() -> None:
    out = render({"url": "http://127.0.0.1/{{ event.status }}", "timeout": 5,
                  "headers": {"X-S": "{{ event.session_id }}"}, "list": ["{{ attempt }}", 1]})
    assert out == {"url": "http://127.0.0.1/failure", "timeout": 5,
                   "headers": {"X-S": "s-1"}, "list": ["1", 1]}


def test_jinja_globals_are_available_and_set_does_not_leak_between_options() -> None:
    out = render({"a": "{% for i in range(3) %}{{ i }}{% endfor %}",
                  "b": "{% set ns = namespace(n=2) %}{{ ns.n }}{% set x = 1 %}{{ x }}",
                  "c": "{{ x | default('none') }}"})
    assert out == {"a": "012", "b": "21", "c": "none"}


def test_undefined_names_are_errors() -> None:
    with pytest.raises(jinja2.UndefinedError):
        render("{{ event.no_such_field }}")
    with pytest.raises(jinja2.UndefinedError):
        render("{{ nope }}")


def test_the_sandbox_still_guards_attributes() -> None:
    with pytest.raises(SecurityError):
        render("{{ event.__class__.__mro__[1].__subclasses__() }}")
    with pytest.raises(SecurityError):
        render("{{ event.update({'status': 'x'}) }}")


def test_the_sandbox_range_limit_holds() -> None:
    """Templates get the sandbox's globals: its range() refuses more than 100,000 items
    (Jinja's default range would build ten million here)."""
    assert render("{{ range(5) | list | length }}") == "5"
    with pytest.raises(OverflowError, match="Range too big"):
        render("{{ range(10000000) | length }}")
    with pytest.raises(OverflowError, match="Range too big"):
        render({"a": "{{ event.status }}", "b": "{% for i in range(200000) %}{% endfor %}"})
