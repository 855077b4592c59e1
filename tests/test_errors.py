"""One error hierarchy: everything the relay raises on purpose is a RelayError."""

from __future__ import annotations

import suki_relay.errors as errors
from suki_relay.errors import (
    ConfigError,
    DeliveryError,
    PermanentError,
    Rejected,
    RelayError,
    RetryableError,
    SchemaTooNew,
    StoreUnavailable,
)


def test_the_hierarchy_is_the_one_drawn() -> None:
    for cls in (ConfigError, StoreUnavailable, SchemaTooNew, Rejected, DeliveryError):
        assert issubclass(cls, RelayError)
    assert issubclass(RetryableError, DeliveryError) and issubclass(PermanentError, DeliveryError)
    for cls in (ConfigError, StoreUnavailable, SchemaTooNew, Rejected, RetryableError):
        assert cls.__name__ in (errors.__doc__ or "")
    assert not hasattr(errors, "PluginError")


def test_the_old_homes_are_gone() -> None:
    import suki_relay.receive.verify as verify
    import suki_relay.store.base as base

    assert "Rejected" not in vars(verify) or verify.Rejected is Rejected
    assert not hasattr(base, "StoreUnavailable") and not hasattr(base, "STATES")
