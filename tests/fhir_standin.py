"""The FHIR stand-in the tests use (suki_relay.testing_fhir; `suki-relay stand-in fhir`
runs the same). Importing it skips the importing test module without fhir.resources (the
dev extra), which the tests need to validate every resource the fhir action builds."""

from __future__ import annotations

from tests.support.extras import skip_without

try:
    import fhir.resources.R4B.documentreference  # noqa: F401  (the dev extra)
except ModuleNotFoundError as exc:
    skip_without(exc)

from suki_relay.testing_fhir import CLIENT_ID, CLIENT_SECRET, FhirStandIn, outcome

__all__ = ["CLIENT_ID", "CLIENT_SECRET", "FhirStandIn", "outcome"]
