"""Errors a user can cause, and how an action reports a failed delivery.

    RelayError                 a mistake in what the user gave us; the CLI prints it cleanly
     ├── ConfigError           actions.yaml, plugin options, templates: every Problem found
     └── PluginError           an installed plugin that cannot be loaded
    DeliveryError              raised by an action's deliver()
     ├── RetryableError        try again later (after retry_after seconds if given)
     └── PermanentError        do not retry; the delivery is kept as failed, for replay

Bugs are none of these and keep their tracebacks.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Problem:
    """One thing wrong with the configuration, with where it is and what was expected."""

    where: str
    message: str
    line: int | None = None
    file: str | None = None

    def __str__(self) -> str:
        loc = self.file or "actions.yaml"
        if self.line:
            loc += f":{self.line}"
        return f"{loc}: {self.where}: {self.message}"


class RelayError(Exception):
    """A mistake the user can fix; printed without a traceback."""


class ConfigError(RelayError):
    def __init__(self, problems: list[Problem]):
        self.problems = list(problems)
        super().__init__("\n".join(str(p) for p in self.problems))


class PluginError(RelayError):
    pass


class DeliveryError(Exception):
    """Base for what an action raises when a delivery did not succeed.

    The message is stored with the delivery and shown by `suki-relay show`; it must not
    contain note content or secrets. Logs carry only the class name.
    """


class RetryableError(DeliveryError):
    def __init__(self, message: str, retry_after: float | None = None, status: int | None = None):
        super().__init__(message)
        self.retry_after = retry_after
        self.status = status


class PermanentError(DeliveryError):
    def __init__(self, message: str, status: int | None = None):
        super().__init__(message)
        self.status = status
