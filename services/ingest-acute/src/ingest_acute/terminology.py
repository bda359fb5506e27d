"""HL7 v2 tables and coding-system names, and what they become in FHIR R4.

Every table here is small and fixed; docs/ingest-acute.md lists the same mappings. Codes a
feed sends that a table does not know are kept as codes without a system (never guessed).
"""

from __future__ import annotations

from fhir_common.codes import (
    ADMISSION_METHOD_SYSTEM,
    ICD10,
    ICD10_UK,
    LOINC,
    SNOMED,
    V3_ACT_CODE,
)

V2_TABLE_BASE = "http://terminology.hl7.org/CodeSystem/v2-"
V2_IDENTIFIER_TYPE = f"{V2_TABLE_BASE}0203"
V2_ADMISSION_TYPE = f"{V2_TABLE_BASE}0007"
V3_NULL_FLAVOR = "http://terminology.hl7.org/CodeSystem/v3-NullFlavor"
V3_PARTICIPATION_TYPE = "http://terminology.hl7.org/CodeSystem/v3-ParticipationType"
V3_OBSERVATION_INTERPRETATION = "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation"
DIAGNOSIS_ROLE = "http://terminology.hl7.org/CodeSystem/diagnosis-role"
CONDITION_CATEGORY = "http://terminology.hl7.org/CodeSystem/condition-category"
CONDITION_CLINICAL = "http://terminology.hl7.org/CodeSystem/condition-clinical"
CONDITION_VERIFICATION = "http://terminology.hl7.org/CodeSystem/condition-ver-status"
ALLERGY_CLINICAL = "http://terminology.hl7.org/CodeSystem/allergyintolerance-clinical"
ALLERGY_VERIFICATION = "http://terminology.hl7.org/CodeSystem/allergyintolerance-verification"
OBSERVATION_CATEGORY = "http://terminology.hl7.org/CodeSystem/observation-category"
UCUM = "http://unitsofmeasure.org"
ICD9_CM = "http://hl7.org/fhir/sid/icd-9-cm"
US_NPI = "http://hl7.org/fhir/sid/us-npi"
GMC_NUMBER = "https://fhir.hl7.org.uk/Id/gmc-number"
GMP_NUMBER = "https://fhir.hl7.org.uk/Id/gmp-number"
NMC_NUMBER = "https://fhir.hl7.org.uk/Id/nmc-number"

# UK Core (England) code systems and extensions for hospital encounters.
SOURCE_OF_ADMISSION_SYSTEM = "https://fhir.hl7.org.uk/CodeSystem/UKCore-SourceOfAdmissionEngland"
DISCHARGE_METHOD_SYSTEM = "https://fhir.hl7.org.uk/CodeSystem/UKCore-DischargeMethodEngland"
DISCHARGE_METHOD_EXTENSION = (
    "https://fhir.hl7.org.uk/StructureDefinition/Extension-UKCore-DischargeMethod"
)
DISCHARGE_DESTINATION_SYSTEM = (
    "https://fhir.hl7.org.uk/CodeSystem/UKCore-DischargeDestinationEngland"
)

# Coding-system names in CE/CWE component 3 (HL7 table 0396 and what feeds really send).
CODING_SYSTEMS = {
    "I10": ICD10,
    "ICD10": ICD10,
    "ICD-10": ICD10,
    "I10UK": ICD10_UK,
    "ICD10UK": ICD10_UK,
    "I9": ICD9_CM,
    "I9C": ICD9_CM,
    "ICD9": ICD9_CM,
    "ICD9CM": ICD9_CM,
    "SCT": SNOMED,
    "SNOMED": SNOMED,
    "SNOMEDCT": SNOMED,
    "SNOMED CT": SNOMED,
    "SNM": SNOMED,
    "LN": LOINC,
    "LOINC": LOINC,
    "UCUM": UCUM,
}


def coding_system(name: str) -> str | None:
    """The FHIR system URI of a v2 coding-system name; ``HL7nnnn`` tables too."""
    upper = name.strip().upper()
    if upper in CODING_SYSTEMS:
        return CODING_SYSTEMS[upper]
    if upper.startswith("HL7") and upper[3:].isdigit() and len(upper) == 7:
        return f"{V2_TABLE_BASE}{upper[3:]}"
    if upper.startswith(("HTTP://", "HTTPS://", "URN:")):
        return name.strip()
    return None


# PID-8 administrative sex: HL7 table 0001, and the NHS Data Dictionary codes (0/1/2/9) that
# English feeds send in the same field.
SEX = {
    "M": "male",
    "F": "female",
    "O": "other",
    "A": "other",
    "U": "unknown",
    "N": "unknown",
    "1": "male",
    "2": "female",
    "9": "other",
    "0": "unknown",
    "X": "unknown",
}

# XPN-7 name type (table 0200) -> HumanName.use
NAME_USE = {
    "L": "official",
    "D": "usual",
    "M": "maiden",
    "N": "nickname",
    "B": "old",
    "A": "usual",
    "C": "old",
}

# XAD-7 address type (table 0190) -> (Address.use, Address.type)
ADDRESS_USE: dict[str, tuple[str | None, str | None]] = {
    "H": ("home", None),
    "P": ("home", "physical"),
    "M": (None, "postal"),
    "B": ("work", None),
    "O": ("work", None),
    "C": ("temp", None),
    "BA": ("old", None),
    "BR": ("old", None),
    "V": ("temp", None),
}
UK_COUNTRIES = frozenset({"GBR", "GB", "UK", "ENG", "ENGLAND", "WLS", "SCT", "NIR"})

# XTN-2 telecommunication use (table 0201) and XTN-3 equipment type (table 0202)
TELECOM_USE = {"PRN": "home", "ORN": "home", "VHN": "temp", "WPN": "work", "EMR": "temp"}
TELECOM_SYSTEM = {
    "PH": "phone",
    "CP": "phone",
    "FX": "fax",
    "BP": "pager",
    "INTERNET": "email",
    "X.400": "email",
    "MD": "other",
    "TDD": "other",
    "TTY": "other",
}

# PV1-2 patient class (table 0004) -> Encounter.class (v3 ActCode)
ENCOUNTER_CLASS = {
    "E": ("EMER", "emergency"),
    "I": ("IMP", "inpatient encounter"),
    "O": ("AMB", "ambulatory"),
    "P": ("PRENC", "pre-admission"),
    "R": ("AMB", "ambulatory"),  # recurring patient: a series of outpatient visits
    "B": ("IMP", "inpatient encounter"),  # obstetrics
}


def encounter_class(patient_class: str) -> dict[str, str]:
    """Encounter.class for PV1-2; ``UNK`` (v3 NullFlavor) when PV1-2 is absent or unknown."""
    found = ENCOUNTER_CLASS.get(patient_class.strip().upper())
    if found is None:
        return {"system": V3_NULL_FLAVOR, "code": "UNK", "display": "unknown"}
    return {"system": V3_ACT_CODE, "code": found[0], "display": found[1]}


# NHS Data Dictionary code lists (England) that UK Core carries. A PV1 code found in a list
# gets the UK Core system; any other code is kept without a system.
ADMISSION_METHODS = frozenset(
    {"11", "12", "13", "21", "22", "23", "24", "25", "2A", "2B", "2C", "2D", "28"}
    | {"31", "32", "81", "82", "83", "98", "99"}
)
ADMISSION_SOURCES = frozenset(
    {"19", "29", "37", "38", "39", "40", "41", "42", "49", "50", "51", "52", "53", "54", "55"}
    | {"56", "57", "65", "66", "69", "79", "85", "87", "88", "89", "98", "99"}
)
DISCHARGE_METHODS = frozenset({"1", "2", "3", "4", "5", "8", "9"})
DISCHARGE_DESTINATIONS = frozenset(
    {"19", "29", "30", "37", "38", "48", "49", "50", "51", "52", "53", "54", "65", "66", "79"}
    | {"84", "85", "87", "88", "89", "98", "99"}
)
ADMISSION_METHOD = ADMISSION_METHOD_SYSTEM

# DG1-6 diagnosis type (table 0052) -> (Encounter.diagnosis.use, Condition.verificationStatus)
DIAGNOSIS_TYPE = {
    "A": ("AD", "provisional"),
    "W": (None, "provisional"),
    "F": ("DD", "confirmed"),
}
DIAGNOSIS_USE_DISPLAY = {"AD": "Admission diagnosis", "DD": "Discharge diagnosis"}

# AL1-2 allergen type (table 0127) -> (AllergyIntolerance.type, category)
ALLERGEN_TYPE: dict[str, tuple[str, str | None]] = {
    "DA": ("allergy", "medication"),
    "FA": ("allergy", "food"),
    "EA": ("allergy", "environment"),
    "AA": ("allergy", "environment"),
    "PA": ("allergy", "environment"),
    "LA": ("allergy", "environment"),
    "MA": ("allergy", None),
    "MC": ("intolerance", None),
}
# AL1-4 allergy severity (table 0128) -> AllergyIntolerance.criticality
ALLERGY_CRITICALITY = {"SV": "high", "MO": "low", "MI": "low", "U": "unable-to-assess"}

# OBX-11 observation result status (table 0085) -> Observation.status
OBSERVATION_STATUS = {
    "F": "final",
    "U": "final",
    "C": "corrected",
    "P": "preliminary",
    "R": "preliminary",
    "S": "preliminary",
    "A": "amended",
    "I": "registered",
    "O": "registered",
    "X": "cancelled",
    "D": "entered-in-error",
    "W": "entered-in-error",
    "N": "unknown",
}
# OBX-8 abnormal flags (table 0078) that v3 ObservationInterpretation shares
INTERPRETATIONS = frozenset(
    {"L", "H", "LL", "HH", "N", "A", "AA", "<", ">", "S", "R", "I", "U", "D", "B", "W"}
)
