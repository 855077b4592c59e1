"""The one registry of action types: entry points in the group ``suki_relay.actions``.

Built-in actions are registered through this project's own pyproject.toml, exactly as a
third-party package registers its own, so there is one way in. A plugin that cannot be
imported is reported, not fatal to the others. A config imports only the action types it
names (``discover(only=...)``): an action type nobody configured costs a process nothing.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import Any

from suki_relay.deliver.action import Action

GROUP = "suki_relay.actions"
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ActionType:
    name: str
    cls: type[Action] | None
    dist: Any  # the installed distribution that registers it (its metadata read when asked)
    value: str  # module:attr
    error: str | None = None
    loaded: bool = True  # False: registered, not imported (discover's ``only`` left it out)

    @property
    def package(self) -> str:
        return self.dist.metadata["Name"] if self.dist else "?"

    @property
    def version(self) -> str:
        return self.dist.version if self.dist else "?"


def discover(only: Iterable[str] | None = None) -> dict[str, ActionType]:
    """Every registered action type by name, each imported; with ``only``, just those
    types are imported, and the others are listed unloaded (``cls`` None, no error)."""
    wanted = None if only is None else set(only)
    found: dict[str, ActionType] = {}
    for ep in entry_points(group=GROUP):
        dist = ep.dist
        if ep.name in found:
            prev = found[ep.name]
            package = dist.metadata["Name"] if dist else "?"
            found[ep.name] = ActionType(
                ep.name, None, dist, ep.value,
                f"type {ep.name!r} is registered twice ({prev.package} and {package})",
            )
            continue
        if wanted is not None and ep.name not in wanted:
            found[ep.name] = ActionType(ep.name, None, dist, ep.value, loaded=False)
            continue
        try:
            cls = ep.load()
            if not (isinstance(cls, type) and issubclass(cls, Action)):
                raise TypeError(f"{ep.value} is not a subclass of suki_relay.deliver.action.Action")
        except Exception as exc:
            package = dist.metadata["Name"] if dist else "?"
            log.error("action plugin %r from %s cannot be loaded: %s", ep.name, package, exc)
            found[ep.name] = ActionType(ep.name, None, dist, ep.value,
                                        f"{type(exc).__name__}: {exc}")
            continue
        found[ep.name] = ActionType(ep.name, cls, dist, ep.value)
    return found
