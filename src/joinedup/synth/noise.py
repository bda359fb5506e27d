"""Data-quality noise, at the rates we chose to mimic real feeds (our estimates; every rate is a
knob here so tests and demos can turn it up or off).

* HL7 v2: duplicates (the same message resent), late messages (sent hours after the event),
  erroneous admissions cancelled with A11, discharges cancelled with A13, ED registrations under a
  temporary number later merged with A40, and NHS numbers missing, written with spaces or keyed
  with a wrong digit.
* GP FHIR: resent bundles (a PUT again: harmless if ingest is idempotent).
* CSV: blank and mistyped NHS numbers, rows that miss their extract and arrive in a later one,
  rows repeated in the next extract.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any


@dataclass(frozen=True)
class Noise:
    hl7_duplicate: float = 0.005
    hl7_late: float = 0.02
    hl7_late_hours: tuple[float, float] = (1.0, 48.0)
    hl7_a08_update: float = 0.2
    hl7_cancelled_admission: float = 0.005
    hl7_cancelled_discharge: float = 0.01
    hl7_unknown_patient: float = 0.01  # ED registers a temporary number, merged later (A40)
    nhs_missing: float = 0.015
    nhs_spaces: float = 0.005
    nhs_typo: float = 0.002
    gp_duplicate: float = 0.003
    csv_nhs_blank: float = 0.02
    csv_nhs_typo: float = 0.003
    csv_late: float = 0.03
    csv_repeat: float = 0.01

    @classmethod
    def none(cls) -> Noise:
        """No noise at all: every feed clean (for tests that check content, not resilience)."""
        rates: dict[str, Any] = {
            name: 0.0 for name in cls.__dataclass_fields__ if name != "hl7_late_hours"
        }
        return replace(cls(), **rates)
