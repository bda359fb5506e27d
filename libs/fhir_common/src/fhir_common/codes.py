"""Code systems and the small value sets that JoinedUp's rules and models read.

Every set here is one row of DESIGN.md "Codes". They are enumerations, not terminology-server
expansions: SNOMED CT "and descendants" cannot be listed without a terminology server, so each set
holds the concepts the contract names and ``ValueSet.with_codes`` is the extension point for adding
more (for example the result of a ``$expand`` of ``<< 302866003`` run at deployment time).

ICD-10 codes are matched by prefix, ignoring dots, spaces and case: ``E16.0`` in a set matches
``E16.0``, ``E160`` and ``E1600``, and ``E10`` matches every ``E10.x``. That also copes with the
fillers that English hospital data add to ICD-10 codes (``E15X``, dagger and asterisk markers
``D``/``A``). Other systems match exactly.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

SNOMED = "http://snomed.info/sct"
#: ICD-10 (WHO) as FHIR names it.
ICD10 = "http://hl7.org/fhir/sid/icd-10"
#: ICD-10 UK edition (the 5th edition is used in England) as the NHS England terminology server
#: names it; feeds use either this or ``ICD10``.
ICD10_UK = "http://hl7.org/fhir/sid/icd-10-uk"
#: ICD-10-CM (US clinical modification): a different classification with 5-6 character codes.
ICD10_CM = "http://hl7.org/fhir/sid/icd-10-cm"
LOINC = "http://loinc.org"
V3_ACT_CODE = "http://terminology.hl7.org/CodeSystem/v3-ActCode"
#: NHS Data Dictionary ADMISSION METHOD, as UK Core carries it.
ADMISSION_METHOD_SYSTEM = "https://fhir.hl7.org.uk/CodeSystem/UKCore-AdmissionMethodEngland"
ADMISSION_METHOD_EXTENSION = (
    "https://fhir.hl7.org.uk/StructureDefinition/Extension-UKCore-AdmissionMethod"
)

#: Systems whose codes are matched by prefix (see the module docstring).
ICD10_SYSTEMS = frozenset({ICD10, ICD10_UK, ICD10_CM})


class Setting(StrEnum):
    """Care setting of a feed; the ``setting`` header of every message (DESIGN.md "Topics")."""

    PRIMARY = "primary"
    ACUTE = "acute"
    COMMUNITY = "community"
    MENTAL_HEALTH = "mental-health"
    SOCIAL_CARE = "social-care"


def _normalise_icd10(code: str) -> str:
    return code.replace(".", "").replace(" ", "").upper()


@dataclass(frozen=True)
class ValueSet:
    """A named, fixed set of (system, code) pairs.

    ``prefix_systems`` are the systems whose codes match by prefix (ICD-10 by default); pass
    ``frozenset()`` for a set that must match ICD-10 codes exactly.
    """

    name: str
    description: str
    codes: frozenset[tuple[str, str]]
    prefix_systems: frozenset[str] = ICD10_SYSTEMS
    _index: Mapping[str, frozenset[str]] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        index: dict[str, set[str]] = {}
        for system, code in self.codes:
            key = _normalise_icd10(code) if system in self.prefix_systems else code
            index.setdefault(system, set()).add(key)
        object.__setattr__(self, "_index", {s: frozenset(c) for s, c in index.items()})

    @classmethod
    def of(cls, name: str, description: str, codes: Mapping[str, Iterable[str]]) -> ValueSet:
        """Build a set from ``{system: [code, ...]}``."""
        pairs = frozenset((system, code) for system, cs in codes.items() for code in cs)
        return cls(name, description, pairs)

    def contains(self, system: str | None, code: str | None) -> bool:
        """True when the code of that system is in the set (by prefix for ICD-10)."""
        if not system or not code:
            return False
        known = self._index.get(system)
        if known is None:
            return False
        if system not in self.prefix_systems:
            return code in known
        normalised = _normalise_icd10(code)
        return any(normalised[:n] in known for n in range(3, len(normalised) + 1))

    def matches(self, codeable_concept: Mapping[str, Any] | None) -> bool:
        """True when any coding of a FHIR CodeableConcept (a dict) is in the set."""
        if not isinstance(codeable_concept, Mapping):
            return False
        codings = codeable_concept.get("coding")
        if not isinstance(codings, list):
            return False
        return any(
            isinstance(c, Mapping) and self.contains(c.get("system"), c.get("code"))
            for c in codings
        )

    def matches_any(self, codeable_concepts: Iterable[Mapping[str, Any]] | None) -> bool:
        """True when any of several CodeableConcepts (e.g. ``Encounter.reasonCode``) matches."""
        return any(self.matches(cc) for cc in codeable_concepts or ())

    def with_codes(self, codes: Iterable[tuple[str, str]]) -> ValueSet:
        """A copy with more (system, code) pairs: the extension point for SNOMED descendants."""
        return ValueSet(
            self.name, self.description, self.codes | frozenset(codes), self.prefix_systems
        )

    def union(self, name: str, description: str, *others: ValueSet) -> ValueSet:
        """A new set holding this set's codes and the others'."""
        codes = self.codes.union(*(o.codes for o in others))
        return ValueSet(name, description, codes, self.prefix_systems)


# --- hypoglycaemia ---------------------------------------------------------------------------

HYPOGLYCAEMIA_SCTID = "302866003"
HYPOGLYCAEMIA_DUE_TO_DIABETES_SCTID = "237633009"
HYPOGLYCAEMIC_EVENT_IN_DIABETES_SCTID = "237632004"
NOCTURNAL_HYPOGLYCAEMIA_SCTID = "237635002"
HYPOGLYCAEMIC_COMA_DUE_TO_DIABETES_SCTID = "421725003"
HYPOGLYCAEMIC_COMA_DUE_TO_TYPE_2_DIABETES_SCTID = "719216001"

# ICD-10 as used in England (WHO ICD-10, UK 5th edition) has no "diabetes with hypoglycaemia" code:
# E10-E14 have only 4th characters, .6 is "with other specified complications" (arthropathy and
# others, not hypoglycaemia) and .0 "with coma" covers hypoglycaemic, hyperosmolar and
# ketoacidotic coma alike. So E10.6/E11.6 are NOT hypoglycaemia and are left out; hypoglycaemia
# without coma is E16.0 (drug-induced, e.g. insulin), E16.1 (other) or E16.2 (unspecified).
# The 5-character E10.64/E11.64 "with hypoglycaemia" codes exist only in ICD-10-CM (US), where
# E1x.641 is "with coma" and E1x.649 "without coma"; they are listed under ICD10_CM only.
_E16 = ("E16.0", "E16.1", "E16.2")

HYPOGLYCAEMIA = ValueSet.of(
    "hypoglycaemia",
    "Hypoglycaemia, including hypoglycaemia due to diabetes and hypoglycaemic coma (SNOMED CT "
    "302866003 and the named descendants; ICD-10 E16.0-E16.2).",
    {
        SNOMED: (
            HYPOGLYCAEMIA_SCTID,
            HYPOGLYCAEMIA_DUE_TO_DIABETES_SCTID,
            HYPOGLYCAEMIC_EVENT_IN_DIABETES_SCTID,
            NOCTURNAL_HYPOGLYCAEMIA_SCTID,
            HYPOGLYCAEMIC_COMA_DUE_TO_DIABETES_SCTID,
            HYPOGLYCAEMIC_COMA_DUE_TO_TYPE_2_DIABETES_SCTID,
        ),
        ICD10: _E16,
        ICD10_UK: _E16,
        ICD10_CM: (*_E16, "E10.64", "E11.64"),
    },
)

# E10.0/E11.0 are "diabetes with coma", which includes but is not limited to hypoglycaemic coma
# (see above): DESIGN.md maps hypoglycaemic coma to them, so a match means "diabetic coma".
HYPOGLYCAEMIC_COMA = ValueSet.of(
    "hypoglycaemic-coma",
    "Hypoglycaemic coma due to diabetes (SNOMED CT 421725003, 719216001; ICD-10 E10.0, E11.0, "
    "which are diabetes with coma of any kind).",
    {
        SNOMED: (
            HYPOGLYCAEMIC_COMA_DUE_TO_DIABETES_SCTID,
            HYPOGLYCAEMIC_COMA_DUE_TO_TYPE_2_DIABETES_SCTID,
        ),
        ICD10: ("E10.0", "E11.0"),
        ICD10_UK: ("E10.0", "E11.0"),
        ICD10_CM: ("E10.641", "E11.641"),
    },
)

# --- diabetes ---------------------------------------------------------------------------------

DIABETES_TYPE_1_SCTID = "46635009"
DIABETES_TYPE_2_SCTID = "44054006"

DIABETES_TYPE_1 = ValueSet.of(
    "diabetes-type-1",
    "Type 1 diabetes mellitus (SNOMED CT 46635009; ICD-10 E10 and all its subdivisions).",
    {SNOMED: (DIABETES_TYPE_1_SCTID,), ICD10: ("E10",), ICD10_UK: ("E10",), ICD10_CM: ("E10",)},
)

DIABETES_TYPE_2 = ValueSet.of(
    "diabetes-type-2",
    "Type 2 diabetes mellitus (SNOMED CT 44054006; ICD-10 E11 and all its subdivisions).",
    {SNOMED: (DIABETES_TYPE_2_SCTID,), ICD10: ("E11",), ICD10_UK: ("E11",), ICD10_CM: ("E11",)},
)

DIABETES = DIABETES_TYPE_1.union("diabetes", "Type 1 or type 2 diabetes mellitus.", DIABETES_TYPE_2)

# --- admissions and encounters ------------------------------------------------------------------

EMERGENCY_ADMISSION_SCTID = "183452005"

EMERGENCY_ADMISSION = ValueSet.of(
    "emergency-admission",
    "Emergency hospital admission (SNOMED CT 183452005).",
    {SNOMED: (EMERGENCY_ADMISSION_SCTID,)},
)

#: Encounter.class codes (system ``V3_ACT_CODE``).
EMER = "EMER"
IMP = "IMP"
AMB = "AMB"
ENCOUNTER_CLASS_DISPLAY = {EMER: "emergency", IMP: "inpatient encounter", AMB: "ambulatory"}


def encounter_class(code: str) -> dict[str, str]:
    """The Encounter.class Coding for EMER, IMP or AMB."""
    return {"system": V3_ACT_CODE, "code": code, "display": ENCOUNTER_CLASS_DISPLAY[code]}


#: Emergency admission methods (NHS Data Dictionary ADMISSION METHOD, England), code -> meaning.
ADMISSION_METHODS = {
    "21": "Emergency admission via A&E (the provider's emergency care or dental casualty dept)",
    "22": "Emergency admission via a GP (request for immediate admission)",
    "23": "Emergency admission via the bed bureau",
    "24": "Emergency admission via a consultant clinic",
    "28": "Emergency admission by other means (incl. via another provider's A&E)",
}
EMERGENCY_ADMISSION_METHODS = frozenset(ADMISSION_METHODS)

# --- frailty ----------------------------------------------------------------------------------

FRAILTY_SCTID = "248279007"
FRAILTY_MILD = "925791000000100"
FRAILTY_MODERATE = "925831000000107"
FRAILTY_SEVERE = "925861000000102"

FRAILTY = ValueSet.of(
    "frailty",
    "Frailty, and mild, moderate or severe frailty (SNOMED CT; the last three are UK extension).",
    {SNOMED: (FRAILTY_SCTID, FRAILTY_MILD, FRAILTY_MODERATE, FRAILTY_SEVERE)},
)

# --- laboratory -------------------------------------------------------------------------------

HBA1C_PERCENT_LOINC = "4548-4"
HBA1C_IFCC_LOINC = "59261-8"

HBA1C = ValueSet.of(
    "hba1c",
    "Haemoglobin A1c: LOINC 4548-4 (% of total Hb) and 59261-8 (IFCC, mmol/mol).",
    {LOINC: (HBA1C_PERCENT_LOINC, HBA1C_IFCC_LOINC)},
)

# --- who is responsible (CareTeam.participant.role) --------------------------------------------

DIABETIC_MEDICINE_ROLE = "408475000"
CARE_COORDINATOR_ROLE = "768820003"

DIABETIC_MEDICINE = ValueSet.of(
    "diabetic-medicine",
    "Care-team role or specialty 'Diabetic medicine' (SNOMED CT 408475000).",
    {SNOMED: (DIABETIC_MEDICINE_ROLE,)},
)

CARE_COORDINATOR = ValueSet.of(
    "care-coordinator",
    "Care-team role 'Care coordinator' (SNOMED CT 768820003).",
    {SNOMED: (CARE_COORDINATOR_ROLE,)},
)
