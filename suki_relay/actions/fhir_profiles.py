"""What each EHR accepts in a DocumentReference create: the ``profile:`` of the fhir action.

Checked against the vendors' public specifications (see docs/actions/fhir.md for sources):

* ``generic``: FHIR R4 / US Core "writing clinical notes"; relies on ``If-None-Exist`` only
  where the server's CapabilityStatement declares conditionalCreate for DocumentReference.
* ``epic``: Epic's DocumentReference.Create (Clinical Notes, R4): no conditional create, a
  relative ``Patient/<id>`` subject, ``context.encounter`` required (an encounter of that
  patient), only the first attachment read, ``text/plain`` base64; docStatus final or
  preliminary; 201 with an empty body and a relative Location.
* ``oracle``: Oracle Health Millennium R4 DocumentReference create: unsupported fields (the
  identifier among them) ignored, every date with a time, ``context.period`` with an end,
  ``content`` exactly one entry whose contentType has a charset, type from LOINC or the
  Millennium code set 72 (one of them), docStatus final or amended; 201 with an empty body,
  an absolute Location and an ETag.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

LOINC = "http://loinc.org"
US_CORE_CATEGORY = "http://hl7.org/fhir/us/core/CodeSystem/us-core-documentreference-category"
CODE_SET_72 = re.compile(r"^https?://fhir\.cerner\.com/[^/]+/codeSet/72$")
TIME_PART = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}")
RELATIVE_PATIENT = re.compile(r"^Patient/[A-Za-z0-9\-.]{1,64}$")


@dataclass(frozen=True)
class Profile:
    name: str
    doc_statuses: tuple[str, ...]
    content_type: str
    conditional_create: bool | None  # None: ask the server's CapabilityStatement
    needs_encounter: bool = False
    needs_period: bool = False
    one_attachment: bool = False
    relative_patient: bool = False

    def problems(self, values: dict[str, object]) -> list[str]:
        """What a config cannot meet under this profile (check time)."""
        found = []
        if values["doc_status"] not in self.doc_statuses:
            found.append(f"doc_status: profile {self.name} takes "
                         f"{' or '.join(self.doc_statuses)}")
        if self.needs_encounter and values.get("encounter") is None:
            found.append(f"encounter: required by profile {self.name} (context.encounter: an "
                         "existing encounter of the patient)")
        period = values.get("period")
        if self.needs_period and (not isinstance(period, dict) or period.get("end") is None):
            found.append(f"period: required by profile {self.name}, with an `end` that has a "
                         "time part (context.period.end)")
        if self.one_attachment and values.get("attach_json"):
            found.append(f"attach_json: profile {self.name} files exactly one attachment "
                         "(the server reads or accepts only one)")
        kind = values.get("document_type")
        if self.name == "oracle" and isinstance(kind, dict):
            system = kind.get("system", LOINC)
            if system != LOINC and not CODE_SET_72.match(str(system)):
                found.append("document_type: profile oracle takes a LOINC code or one of "
                             "code set 72 (system https://fhir.cerner.com/<tenant>/codeSet/72)")
        return found


PROFILES = {
    "generic": Profile("generic", ("final", "preliminary", "amended"),
                       "text/plain; charset=utf-8", None),
    "epic": Profile("epic", ("final", "preliminary"), "text/plain", False,
                    needs_encounter=True, one_attachment=True, relative_patient=True),
    "oracle": Profile("oracle", ("final", "amended"), "text/plain; charset=utf-8", False,
                      needs_period=True, one_attachment=True),
}
