"""The organisations of the synthetic world: GP practices in multidisciplinary groups (MDGs),
acute trusts, a community provider, a mental-health trust and the boroughs' social services, with
the clinicians that care teams name. Everything follows from the seed and the population size.

ODS codes are fictional but well formed: practices ``Y9nnnn``, organisations ``Z..``; no real
organisation has them. Each hospital trust has its own habits, as real ones do: how it writes the
NHS number in PID-3 and whether its diagnoses are SNOMED CT or ICD-10.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from fhir_common.feeds import Feed, FeedKind
from joinedup.synth import targets
from joinedup.synth.rng import stream

GMC_SYSTEM = "https://fhir.hl7.org.uk/Id/gmc-number"
NMC_SYSTEM = "https://fhir.hl7.org.uk/Id/nmc-number"


@dataclass(frozen=True)
class Clinician:
    local_id: str
    registration: str  # GMC number (doctors) or NMC PIN (nurses)
    registration_system: str
    family: str
    given: str
    role: str  # gp | diabetes-consultant | care-coordinator
    organisation: str  # ODS code of the employer


@dataclass(frozen=True)
class Practice:
    index: int
    ods: str
    name: str
    mdg: str
    first_patient: int
    list_size: int
    home_trust: int
    borough: int
    deprivation_shift: float  # practices serve richer or poorer catchments
    gps: tuple[Clinician, ...]

    @property
    def feed_id(self) -> str:
        return f"gp-{self.ods.lower()}"


@dataclass(frozen=True)
class Hospital:
    index: int
    ods: str
    name: str
    pid_style: str  # how PID-3 carries the NHS number (see hl7_adt.PID_STYLES)
    diagnosis_coding: str  # snomed | icd10 | icd10-nodot
    consultants: tuple[Clinician, ...]

    @property
    def feed_id(self) -> str:
        return f"acute-{self.ods.lower()}"


@dataclass(frozen=True)
class Provider:
    """A provider that sends CSV extracts: community, mental health or a borough's social care."""

    ods: str
    name: str
    setting: str
    feed_id: str
    staff: tuple[Clinician, ...] = field(default=())


@dataclass(frozen=True)
class World:
    seed: int
    patients: int
    practices: tuple[Practice, ...]
    mdgs: dict[str, tuple[str, ...]]
    hospitals: tuple[Hospital, ...]
    community: Provider
    mental_health: Provider
    boroughs: tuple[Provider, ...]

    def feeds(self) -> list[Feed]:
        feeds = [
            Feed(
                id=p.feed_id,
                kind=FeedKind.FHIR,
                ods=p.ods,
                setting="primary",
                description=f"{p.name} (synthetic GP practice, {p.mdg})",
            )
            for p in self.practices
        ]
        feeds += [
            Feed(
                id=h.feed_id,
                kind=FeedKind.HL7V2,
                ods=h.ods,
                setting="acute",
                sender=h.ods,
                description=f"{h.name} (synthetic acute trust, HL7 v2.4 ADT)",
            )
            for h in self.hospitals
        ]
        feeds += [
            Feed(
                id=p.feed_id,
                kind=FeedKind.CSV,
                ods=p.ods,
                setting=p.setting,
                description=f"{p.name} (synthetic CSV extract)",
            )
            for p in (self.community, self.mental_health, *self.boroughs)
        ]
        return feeds

    def practice_coordinators(self, practice: Practice) -> tuple[Clinician, Clinician]:
        """The two community care coordinators who work with a practice's MDG patients."""
        staff = self.community.staff
        first = practice.index % len(staff)
        return staff[first], staff[(first + 1) % len(staff)]

    def care_coordinator(self, practice: Practice, patient_index: int) -> Clinician:
        return self.practice_coordinators(practice)[patient_index % 2]

    def diabetes_consultant(self, trust: int, patient_index: int) -> Clinician:
        consultants = self.hospitals[trust].consultants
        return consultants[patient_index % len(consultants)]

    def practice_of(self, patient_index: int) -> Practice:
        for practice in self.practices:
            if (
                practice.first_patient
                <= patient_index
                < practice.first_patient + practice.list_size
            ):
                return practice
        raise IndexError(patient_index)

    def to_json(self) -> dict[str, Any]:
        return {
            "seed": self.seed,
            "patients": self.patients,
            "practices": [asdict(p) | {"feed": p.feed_id} for p in self.practices],
            "mdgs": {name: list(members) for name, members in self.mdgs.items()},
            "hospitals": [asdict(h) | {"feed": h.feed_id} for h in self.hospitals],
            "community": asdict(self.community),
            "mental_health": asdict(self.mental_health),
            "boroughs": [asdict(b) for b in self.boroughs],
        }


_HOSPITALS = (
    ("ZA1", "North Thames Hospitals NHS Trust", "nhs-nh-first", "snomed", 0.5),
    ("ZA2", "Westway University Hospitals NHS Trust", "mrn-first-no-type", "icd10", 0.3),
    ("ZA3", "Riverside and Park Royal Hospitals NHS Trust", "ods-authority-hn", "icd10-nodot", 0.2),
)
_BOROUGHS = (
    ("ZS1", "Borough of Westbourne Adult Social Care"),
    ("ZS2", "Royal Borough of Holland Park Adult Social Care"),
    ("ZS3", "Borough of Fulham Reach Adult Social Care"),
)
_PRACTICE_NAMES = (
    "Canal Side",
    "Westbourne",
    "Paddington Green",
    "Maida Vale",
    "Queens Park",
    "Notting Dale",
    "Portobello",
    "Holland Park",
    "Brook Green",
    "Parsons Green",
    "Marylebone",
    "Little Venice",
    "Kensal Rise",
    "Lisson Grove",
    "Ravenscourt",
    "Bayswater",
    "Church Street",
    "Harrow Road",
)
_CLINICIAN_FAMILY = (
    "Darwin",
    "Townley",
    "Okonjo",
    "Mehta",
    "Fraser",
    "Lindqvist",
    "Achebe",
    "Rahman",
    "Moreau",
    "Kaur",
    "Nakamura",
    "Petrov",
    "Doyle",
    "Haddad",
    "Byrne",
    "Adeyemi",
    "Castillo",
    "Novak",
)
_CLINICIAN_GIVEN = (
    "Samuel",
    "Gregory",
    "Amara",
    "Nikhil",
    "Fiona",
    "Ingrid",
    "Chike",
    "Farah",
    "Claire",
    "Harpreet",
    "Kenji",
    "Elena",
    "Siobhan",
    "Rami",
    "Aoife",
    "Tunde",
    "Lucia",
    "Marek",
)


def _clinician(serial: int, role: str, organisation: str, *, nurse: bool = False) -> Clinician:
    family = _CLINICIAN_FAMILY[serial % len(_CLINICIAN_FAMILY)]
    given = _CLINICIAN_GIVEN[(serial * 5 + 3) % len(_CLINICIAN_GIVEN)]
    if nurse:  # NMC PINs: two digits, a letter, four digits and a letter
        registration = f"{serial % 90 + 10:02d}{'ABCDEFGHIJ'[serial % 10]}{serial % 10_000:04d}E"
        return Clinician(
            f"{role}-{serial:04d}", registration, NMC_SYSTEM, family, given, role, organisation
        )
    registration = f"{9_000_000 + serial * 37 % 1_000_000}"  # 7 digits, a made-up GMC number
    return Clinician(
        f"{role}-{serial:04d}", registration, GMC_SYSTEM, family, given, role, organisation
    )


def _list_sizes(patients: int, rng: np.random.Generator) -> list[int]:
    """Practice list sizes around 5,400 that add up to exactly ``patients``."""
    count = max(1, round(patients / targets.PRACTICE_LIST_SIZE))
    raw = rng.normal(targets.PRACTICE_LIST_SIZE, targets.PRACTICE_LIST_SD, count)
    raw = np.clip(raw, 1_500, 12_000)
    scaled = raw * patients / raw.sum()
    sizes = np.floor(scaled).astype(int)
    remainder = patients - int(sizes.sum())
    for index in np.argsort(-(scaled - sizes), kind="stable")[:remainder]:
        sizes[index] += 1
    return [int(s) for s in sizes]


def _mdg_sizes(practices: int, rng: np.random.Generator) -> list[int]:
    """Group sizes of 5-17 practices; a world with fewer than five practices has one group."""
    if practices < targets.MDG_MIN_PRACTICES * 2:
        return [practices]
    sizes: list[int] = []
    left = practices
    while left > 0:
        size = int(rng.integers(targets.MDG_MIN_PRACTICES, targets.MDG_MAX_PRACTICES + 1))
        if left - size < targets.MDG_MIN_PRACTICES:
            size = left if left <= targets.MDG_MAX_PRACTICES else left - targets.MDG_MIN_PRACTICES
        sizes.append(size)
        left -= size
    return sizes


def build_world(seed: int, patients: int) -> World:
    rng = stream(seed, "world")
    sizes = _list_sizes(patients, rng)
    mdg_sizes = _mdg_sizes(len(sizes), rng)
    mdg_of: list[str] = []
    for number, size in enumerate(mdg_sizes, start=1):
        mdg_of += [f"MDG-{number:02d}"] * size
    hospitals = tuple(
        Hospital(
            index=i,
            ods=ods,
            name=name,
            pid_style=style,
            diagnosis_coding=coding,
            consultants=tuple(
                _clinician(100 + i * 10 + k, "diabetes-consultant", ods) for k in range(4)
            ),
        )
        for i, (ods, name, style, coding, _) in enumerate(_HOSPITALS)
    )
    trust_weights = np.array([share for *_, share in _HOSPITALS])
    practices: list[Practice] = []
    first = 0
    for index, size in enumerate(sizes):
        ods = f"Y9{index + 1:04d}"
        base = _PRACTICE_NAMES[index % len(_PRACTICE_NAMES)]
        suffix = "" if index < len(_PRACTICE_NAMES) else f" {index // len(_PRACTICE_NAMES) + 1}"
        gps = tuple(
            _clinician(1_000 + index * 8 + k, "gp", ods) for k in range(int(rng.integers(3, 7)))
        )
        practices.append(
            Practice(
                index=index,
                ods=ods,
                name=f"{base}{suffix} Medical Centre",
                mdg=mdg_of[index],
                first_patient=first,
                list_size=size,
                home_trust=int(rng.choice(len(hospitals), p=trust_weights)),
                borough=index % len(_BOROUGHS),
                deprivation_shift=float(rng.normal(0.0, 1.2)),
                gps=gps,
            )
        )
        first += size
    mdgs: dict[str, list[str]] = {}
    for practice in practices:
        mdgs.setdefault(practice.mdg, []).append(practice.ods)
    coordinators = tuple(
        _clinician(500 + k, "care-coordinator", "ZC1", nurse=True)
        for k in range(max(4, len(practices)))
    )
    return World(
        seed=seed,
        patients=patients,
        practices=tuple(practices),
        mdgs={name: tuple(members) for name, members in mdgs.items()},
        hospitals=hospitals,
        community=Provider(
            "ZC1",
            "Central West Community Health NHS Trust",
            "community",
            "community-zc1",
            coordinators,
        ),
        mental_health=Provider(
            "ZM1", "Northwest Mind and Mental Health NHS Trust", "mental-health", "mh-zm1"
        ),
        boroughs=tuple(
            Provider(ods, name, "social-care", f"social-{ods.lower()}") for ods, name in _BOROUGHS
        ),
    )
