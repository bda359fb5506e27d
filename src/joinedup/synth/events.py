"""What happens to a person: the true events, before any feed writes them down (with its noise).

Times are days (float) since the start of the feeds; ``clock.py`` turns them into timestamps.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class Kind(StrEnum):
    GP = "gp-consultation"
    LAB = "lab-result"
    ED = "ed-attendance"  # discharged from the emergency department
    EMERGENCY = "emergency-admission"
    ELECTIVE = "elective-admission"
    OUTPATIENT = "outpatient-attendance"
    COMMUNITY = "community-contact"
    MENTAL_HEALTH = "mental-health-contact"
    SOCIAL_CARE = "social-care-package"
    DEATH = "death"


@dataclass(slots=True)
class Event:
    kind: Kind
    start: float
    end: float
    serial: int = 0  # per patient, in order of creation: makes visit numbers and row ids
    trust: int = -1  # hospital index for acute events
    method: int = 0  # admission method (NHS Data Dictionary): 11/12 elective, 21/22/28 emergency
    diagnosis: str = ""  # key of diagnoses.DIAGNOSES
    ed_arrival: float | None = None  # for admissions via A&E and ED attendances
    transfers: tuple[float, ...] = ()
    died: bool = False
    detail: str = ""  # clinic, team, service or package type
    outcome: str = ""  # community/MH attendance outcome; social care package hours
    newly_coded: tuple[str, ...] = ()  # conditions that reach the GP problem list at this event
    observations: tuple[tuple[str, float], ...] = ()  # (observation key, value)
    first_sent: int | None = None  # when the feed first announced it (seconds since epoch)
    ed_first_sent: int | None = None  # when the ED attendance was first announced (A04)

    @property
    def hypoglycaemia(self) -> bool:
        return self.diagnosis == "hypoglycaemia"

    @property
    def acute(self) -> bool:
        return self.kind in _ACUTE


_ACUTE = frozenset({Kind.ED, Kind.EMERGENCY, Kind.ELECTIVE, Kind.OUTPATIENT})
