"""The MLLP stand-in the tests use (suki_relay.testing_mllp; `suki-relay stand-in mllp`
runs the same) and the parsers that check what it received. Importing it skips the
importing test module without the hl7 extra (in the dev extra)."""

from __future__ import annotations

from tests.support.extras import skip_without

try:
    import hl7
    from hl7apy.consts import VALIDATION_LEVEL
    from hl7apy.parser import parse_message
except ModuleNotFoundError as exc:
    skip_without(exc)

from suki_relay.testing_mllp import Answer, MllpStandIn, control_id_of

__all__ = ["VALIDATION_LEVEL", "Answer", "MllpStandIn", "control_id_of", "hl7", "parse_message"]
