"""The one registry of action types: entry points in the group ``suki_relay.actions``.

Built-in actions are registered through this project's own pyproject.toml, exactly as a
third-party package registers its own, so there is one way in. A plugin that cannot be
imported is reported, not fatal to the others.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from importlib.metadata import entry_points

from suki_relay.deliver.action import Action

GROUP = "suki_relay.actions"
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ActionType:
    name: str
    cls: type[Action] | None
    package: str
    version: str
    value: str  # module:attr
    error: str | None = None


def discover() -> dict[str, ActionType]:
    found: dict[str, ActionType] = {}
    for ep in entry_points(group=GROUP):
        dist = ep.dist
        package = dist.metadata["Name"] if dist else "?"
        version = dist.version if dist else "?"
        if ep.name in found:
            prev = found[ep.name]
            found[ep.name] = ActionType(
                ep.name, None, package, version, ep.value,
                f"type {ep.name!r} is registered twice ({prev.package} and {package})",
            )
            continue
        try:
            cls = ep.load()
            if not (isinstance(cls, type) and issubclass(cls, Action)):
                raise TypeError(f"{ep.value} is not a subclass of suki_relay.deliver.action.Action")
        except Exception as exc:
            log.error("action plugin %r from %s cannot be loaded: %s", ep.name, package, exc)
            found[ep.name] = ActionType(ep.name, None, package, version, ep.value,
                                        f"{type(exc).__name__}: {exc}")
            continue
        found[ep.name] = ActionType(ep.name, cls, package, version, ep.value)
    return found
