"""Rules from actions.yaml: conditions compiled once, matched against each payload.

A condition is a tree of small predicate functions; compile errors are collected as
(where, message) pairs, and compile_rules() turns them into Problems at their lines, so
`suki-relay check` can list them all.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from suki_relay.errors import Problem
from suki_relay.options import Option, line_of, validate

Predicate = Callable[[Any], bool]
_MISSING = object()
OPERATORS = ("regex", "exists", "not", "in")


def _lookup_parts(payload: Any, parts: list[str]) -> Any:
    """Follow a dotted path through mappings (and lists, by index)."""
    value = payload
    for part in parts:
        if isinstance(value, dict):
            value = value.get(part, _MISSING)
        elif isinstance(value, list) and part.isdigit() and int(part) < len(value):
            value = value[int(part)]
        else:
            return _MISSING
        if value is _MISSING:
            return _MISSING
    return value


def _field(path: str) -> Callable[[Any], Any]:
    """A compiled lookup of one dotted path (a top-level key is one dict.get)."""
    if "." not in path:
        return lambda p: p.get(path, _MISSING) if isinstance(p, dict) else _MISSING
    parts = path.split(".")
    return lambda p: _lookup_parts(p, parts)


def _all(tests: list[Predicate]) -> Predicate:
    if len(tests) == 1:
        return tests[0]

    def every(payload: Any) -> bool:  # a loop: all() over a generator costs a frame per rule
        for test in tests:  # noqa: SIM110
            if not test(payload):
                return False
        return True

    return every


def _equals(expected: Any) -> Predicate:
    is_bool = isinstance(expected, bool)  # so that `true` never equals 1
    return lambda v: v is not _MISSING and v == expected and isinstance(v, bool) == is_bool


def _value_test(spec: Any, where: str, errors: list[tuple[str, str]]) -> Predicate:
    """A test of one value: scalar equals, list any-of, or {operator: ...}."""
    if isinstance(spec, list):
        tests = [_value_test(s, where, errors) for s in spec]
        return lambda v: any(t(v) for t in tests)
    if isinstance(spec, dict):
        if len(spec) != 1 or next(iter(spec)) not in OPERATORS:
            errors.append((where, f"expected one operator of {', '.join(OPERATORS)}, got "
                                  f"{', '.join(map(str, spec)) or 'nothing'}"))
            return lambda v: False
        op, arg = next(iter(spec.items()))
        if op == "regex":
            try:
                pattern = re.compile(str(arg))
            except re.error as exc:
                errors.append((where, f"invalid regex: {exc}"))
                return lambda v: False
            return lambda v: isinstance(v, str | int | float) and bool(pattern.search(str(v)))
        if op == "exists":
            if not isinstance(arg, bool):
                errors.append((where, "exists: expected true or false"))
            want = bool(arg)
            return lambda v: (v is not _MISSING) == want
        if op == "in":
            if not isinstance(arg, list):
                errors.append((where, "in: expected a list"))
                return lambda v: False
            return _value_test(arg, where, errors)
        inner = _value_test(arg, where, errors)  # not
        return lambda v: not inner(v)
    return _equals(spec)


def compile_condition(when: Any, where: str, errors: list[tuple[str, str]]) -> Predicate:
    """Compile a `when:` mapping; every entry must hold. Empty matches everything."""
    if when is None or when == {}:
        return lambda payload: True
    if not isinstance(when, dict):
        errors.append((where, "expected a mapping of field: value"))
        return lambda payload: False
    tests: list[Predicate] = []
    for key, spec in when.items():
        sub = f"{where}.{key}"
        if key in ("any", "all"):
            if not isinstance(spec, list) or not spec:
                errors.append((sub, f"{key}: expected a non-empty list of conditions"))
                continue
            parts = [compile_condition(c, f"{sub}[{i}]", errors) for i, c in enumerate(spec)]
            tests.append(_any(parts) if key == "any" else _all(parts))
        elif key == "not":
            inner = compile_condition(spec, sub, errors)
            tests.append(_not(inner))
        elif not isinstance(key, str) or not key:
            errors.append((sub, "a condition key must be a dotted field path"))
        else:
            test, get = _value_test(spec, sub, errors), _field(key)
            tests.append(_of_field(test, get))
    return _all(tests)


def _any(parts: list[Predicate]) -> Predicate:
    return lambda payload: any(t(payload) for t in parts)


def _not(inner: Predicate) -> Predicate:
    return lambda payload: not inner(payload)


def _of_field(test: Callable[[Any], bool], get: Callable[[Any], Any]) -> Predicate:
    return lambda payload: test(get(payload))


@dataclass
class Rule:
    name: str
    condition: Predicate
    actions: list[str]
    stop: bool = False
    statuses: frozenset[str] | None = None  # a quick pre-check; None: any status may match
    line: int | None = None  # in actions.yaml, of `status:` when the rule names one


def required_statuses(when: Any) -> frozenset[str] | None:
    """The statuses a `when:` can match at all, when it says so plainly (status: x or [x, y])."""
    spec = when.get("status") if isinstance(when, dict) else None
    if isinstance(spec, str):
        return frozenset([spec])
    if isinstance(spec, list) and spec and all(isinstance(v, str) for v in spec):
        return frozenset(spec)
    return None


@dataclass
class Plan:
    """What routing decided for one event."""

    rules: list[str] = field(default_factory=list)
    actions: list[str] = field(default_factory=list)

    @property
    def matched(self) -> bool:
        return bool(self.rules)


def route(rules: list[Rule], unmatched: list[str], payload: Any) -> Plan:
    plan = Plan()
    status = payload.get("status") if isinstance(payload, dict) else None
    for rule in rules:
        if rule.statuses is not None and status not in rule.statuses:
            continue
        if not rule.condition(payload):
            continue
        plan.rules.append(rule.name)
        for action in rule.actions:
            if action not in plan.actions:
                plan.actions.append(action)
        if rule.stop:
            break
    if not plan.rules:
        plan.actions = list(unmatched)
    return plan


# ---------------------------------------------------------------- compiling actions.yaml's rules


def action_names(raw: Any, where: str, defined: set[str], line: int | None,
                 problems: list[Problem]) -> list[str]:
    """Names of actions; one that is defined but has problems was reported already."""
    if isinstance(raw, str):
        raw = [raw]
    if not isinstance(raw, list):
        problems.append(Problem(where, "expected a list of action names", line))
        return []
    for name in raw:
        if str(name) not in defined:
            known = ", ".join(sorted(defined)) or "none defined"
            problems.append(Problem(where, f"unknown action {name!r}; defined: {known}", line))
    return [str(n) for n in raw]


RULE_OPTIONS: dict[str, Option] = {
    "name": Option((str, int, float), template=False,
                   help="the rule's name, in logs, `show` and `routes test`"),
    "when": Option((dict, type(None)), template=False,
                   help="conditions on the payload, all of which must hold; none: always"),
    "do": Option((list, str), template=False, help="the names of the actions to run"),
    "stop": Option(bool, default=False, template=False,
                   help="when this rule matches, later rules are not evaluated"),
}


def compile_rules(raw: list[Any], actions: set[str], problems: list[Problem]) -> list[Rule]:
    """The ``rules:`` list compiled, each problem at its line; ``actions``: names defined."""
    rules: list[Rule] = []
    names: set[str] = set()
    for i, item in enumerate(raw):
        rline = line_of(item)
        if not isinstance(item, dict):
            problems.append(Problem(f"rules[{i}]", "expected a mapping with name, when, do", rline))
            continue
        name = str(item.get("name") or f"rule {i + 1}")
        where = f"rule {name!r}"
        if name in names:
            problems.append(Problem(where, "rule name used twice", rline))
        names.add(name)
        values, found = validate(RULE_OPTIONS, item, where)
        problems += found
        errors: list[tuple[str, str]] = []
        condition = compile_condition(values["when"], f"{where}.when", errors)
        problems += [Problem(sub, message, line_of(item, "when")) for sub, message in errors]
        if "do" not in item:
            problems.append(Problem(where, "missing `do:` (the list of actions to run)", rline))
        do = action_names(values["do"] or [], f"{where}.do", actions,
                          line_of(item, "do") or rline, problems)
        when = values["when"]
        rules.append(Rule(name, condition, do, bool(values["stop"]), required_statuses(when),
                          line=line_of(when, "status") if isinstance(when, dict) else rline))
    return rules
