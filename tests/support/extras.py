"""The dev extra's optional parts (fhir.resources, hl7, hl7apy): a test module that needs
one is skipped where it is not installed, and fails in CI, where the dev extra always is.
Imported through tests/fhir_standin.py and tests/mllp_standin.py, which call this."""

from __future__ import annotations

import os
from typing import NoReturn

import pytest


def skip_without(exc: ModuleNotFoundError) -> NoReturn:
    """The importing test module is skipped for the missing module (CI: the error stands)."""
    if os.environ.get("CI"):
        raise exc
    pytest.skip(f"{exc.name} is not installed: pip install -e '.[dev]'", allow_module_level=True)
