"""Every error the relay raises on purpose, in one hierarchy.

    RelayError                   the base: a condition the relay expects and reports cleanly
     ├── ConfigError             actions.yaml, plugin options, templates: every Problem found
     ├── StoreError              the store cannot be used as asked
     │    ├── StoreUnavailable   it cannot commit right now (database down, disk full, locked
     │    │                      too long): the receiver answers 503, deliveries wait
     │    └── SchemaTooNew       its schema is newer than this relay: upgrade the relay
     ├── Rejected                a request refused: an HTTP status and a payload-free reason
     └── DeliveryError           raised by an action's deliver()
          ├── RetryableError     try again later (after retry_after seconds if given)
          ├── PermanentError     do not retry; the delivery is kept as failed, for replay
          └── InDoubtError       the target may or may not have acted (a write whose answer
                                 was lost, and nothing can tell): neither retried nor
                                 failed, the delivery waits as `unknown` for an operator

The CLI prints any RelayError as a message and exits non-zero; only bugs are none of these,
and they keep their tracebacks. No message carries payload content or a secret.
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
    warning: bool = False  # worth a look, but the config works as written

    def __str__(self) -> str:
        loc = self.file or "actions.yaml"
        if self.line:
            loc += f":{self.line}"
        return f"{loc}: {'warning: ' if self.warning else ''}{self.where}: {self.message}"


class RelayError(Exception):
    """A condition the user can see and act on; printed without a traceback."""


class ConfigError(RelayError):
    def __init__(self, problems: list[Problem]):
        self.problems = list(problems)
        super().__init__("\n".join(str(p) for p in self.problems))


class StoreError(RelayError):
    """The store cannot be used as asked."""


class StoreUnavailable(StoreError):
    """The store cannot commit right now (database down, disk full, locked too long)."""


class SchemaTooNew(StoreError):
    """The database was upgraded by a newer suki-relay than this one."""


class Rejected(RelayError):
    """A request we refuse: an HTTP status and a short, payload-free reason code."""

    def __init__(self, status: int, reason: str, message: str):
        super().__init__(message)
        self.status = status
        self.reason = reason
        self.message = message


class DeliveryError(RelayError):
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


class InDoubtError(DeliveryError):
    """The outcome is unknown and sending again could act twice (a note filed twice): the
    delivery goes to state ``unknown`` until an operator settles it (`suki-relay resolve`)."""

    def __init__(self, message: str, status: int | None = None):
        super().__init__(message)
        self.status = status
