"""The FHIR stand-in the tests use (suki_relay.testing_fhir; `suki-relay stand-in fhir`
runs the same). Importing it here fails without fhir.resources, which the tests need to
validate every resource the fhir action builds."""

from __future__ import annotations

import fhir.resources.R4B.documentreference  # noqa: F401  (the dev extra)

from suki_relay.testing_fhir import CLIENT_ID, CLIENT_SECRET, FhirStandIn, outcome

__all__ = ["CLIENT_ID", "CLIENT_SECRET", "FhirStandIn", "outcome"]
