"""NHS numbers, ODS codes, local identifier systems, resource ids and patient keys."""

from __future__ import annotations

import os
import re
import uuid
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from fhir_common.identifiers import (
    JOINEDUP_NAMESPACE,
    NHS_NUMBER_SYSTEM,
    ODS_ORGANIZATION_SYSTEM,
    ODS_SITE_SYSTEM,
    is_valid_nhs_number,
    is_valid_ods_code,
    local_identifier_system,
    nhs_check_digit,
    nhs_number_of,
    normalise_nhs_number,
    patient_key,
    resource_id,
)

SAMPLES = Path(os.environ.get("JOINEDUP_SAMPLES", Path(__file__).parents[4] / "shared/samples"))
UK_CORE = SAMPLES / "uk-core-r4-examples"
ITK_ADT = SAMPLES / "nhs-england-itk-hl7v2-adt"
FHIR = "{http://hl7.org/fhir}"


def uk_core_identifiers(file_name: str, system: str) -> list[str]:
    """The identifier values of one system in a UK Core example (FHIR XML)."""
    root = ET.parse(UK_CORE / file_name).getroot()
    values = []
    for identifier in root.iter(f"{FHIR}identifier"):
        sys_el = identifier.find(f"{FHIR}system")
        value_el = identifier.find(f"{FHIR}value")
        if sys_el is not None and value_el is not None and sys_el.get("value") == system:
            values.append(value_el.get("value", ""))
    return values


# --- NHS numbers from real samples ----------------------------------------------------------------


def test_uk_core_richard_smith_nhs_number_is_valid() -> None:
    numbers = uk_core_identifiers("UKCore-Patient-RichardSmith-Example.xml", NHS_NUMBER_SYSTEM)
    assert numbers == ["9912003888"]
    assert is_valid_nhs_number("9912003888")


def test_uk_core_pheobe_smitham_nhs_number_is_valid() -> None:
    file_name = "Extension-UKCore-SampleCategory-PheobeSmitham-Example.xml"
    assert uk_core_identifiers(file_name, NHS_NUMBER_SYSTEM) == ["9449307539"]
    assert is_valid_nhs_number("9449307539")


def test_uk_core_baby_patient_nhs_number_fails_the_check_digit() -> None:
    # Published as "present and verified", but 9*10+9*9+1*8+2*7+0+0+3*4+8*3+9*2 = 247,
    # 247 mod 11 = 5, so the check digit must be 11 - 5 = 6, not 0.
    numbers = uk_core_identifiers("UKCore-Patient-BabyPatient-Example.xml", NHS_NUMBER_SYSTEM)
    assert numbers == ["9912003890"]
    assert nhs_check_digit("991200389") == 6
    assert not is_valid_nhs_number("9912003890")
    assert is_valid_nhs_number("9912003896")


def nhs_numbers_in_adt(path: Path) -> set[str]:
    """NHS numbers in PID-3 repetitions typed ``^^^NHS`` of an ER7 message."""
    text = path.read_text(encoding="latin-1")
    return set(re.findall(r"(?:^|[|~])(\d{10})\^\^\^NHS", text, flags=re.MULTILINE))


def test_every_nhs_number_in_the_itk_adt_examples_is_valid() -> None:
    numbers = set().union(*(nhs_numbers_in_adt(p) for p in ITK_ADT.rglob("*.txt")))
    # 4010232137 (query examples ZV1/ZV2) and the repdigit 3333333333 used by most ADT examples,
    # which passes the modulus-11 check like every repdigit does.
    assert numbers == {"4010232137", "3333333333"}
    assert all(is_valid_nhs_number(n) for n in numbers)


# --- the algorithm ----------------------------------------------------------------------------


def test_wikipedia_worked_example() -> None:
    # 9*10+4*9+3*8+4*7+7*6+6*5+5*4+9*3+1*2 = 299; 299 mod 11 = 2; 11 - 2 = 9.
    assert nhs_check_digit("943476591") == 9
    assert is_valid_nhs_number("9434765919")


@pytest.mark.parametrize("last", "012345678")
def test_wrong_check_digit_is_invalid(last: str) -> None:
    assert not is_valid_nhs_number("943476591" + last)


@pytest.mark.parametrize("last", "0123456789")
def test_remainder_giving_check_digit_10_is_invalid_whatever_the_last_digit(last: str) -> None:
    # 1*10+2*9+3*8+4*7+5*6+6*5+7*4+8*3+9*2 = 210; 210 mod 11 = 1; 11 - 1 = 10 -> invalid.
    assert nhs_check_digit("123456789") is None
    assert not is_valid_nhs_number("123456789" + last)


def test_check_11_becomes_0() -> None:
    # 1*3 + 4*2 = 11; 11 mod 11 = 0; 11 - 0 = 11, which becomes check digit 0.
    assert nhs_check_digit("000000014") == 0
    assert is_valid_nhs_number("0000000140")
    assert not is_valid_nhs_number("0000000141")


def test_every_repdigit_passes_the_check() -> None:
    # d*(10+9+...+2) = 54d = -d (mod 11), so the check digit is d: the check cannot catch these.
    assert all(is_valid_nhs_number(str(d) * 10) for d in range(10))


@pytest.mark.parametrize(
    "value",
    [
        "943476591",
        "94347659190",
        "943 476 5919",
        "943-476-5919",
        "94347659I9",
        "",
        "\uff19\uff14\uff13\uff14\uff17\uff16\uff15\uff19\uff11\uff19",  # full-width digits
    ],
)
def test_is_valid_needs_exactly_ten_ascii_digits(value: str) -> None:
    assert not is_valid_nhs_number(value)


def test_is_valid_rejects_non_strings() -> None:
    assert not is_valid_nhs_number(9434765919)  # type: ignore[arg-type]
    assert not is_valid_nhs_number(None)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("9434765919", "9434765919"),
        ("943 476 5919", "9434765919"),
        ("943-476-5919", "9434765919"),
        (" 943 476 5919\t", "9434765919"),
        ("9434765918", None),
        ("943 476 591", None),
        ("NHS9434765919", None),
        ("", None),
    ],
)
def test_normalise_nhs_number(raw: str, expected: str | None) -> None:
    assert normalise_nhs_number(raw) == expected


# --- ODS codes and local systems ----------------------------------------------------------------


def test_uk_core_ods_codes_are_well_formed() -> None:
    files = sorted(UK_CORE.glob("*.xml"))
    codes = {code for f in files for code in uk_core_identifiers(f.name, ODS_ORGANIZATION_SYSTEM)}
    assert {"RR8", "GP5"} <= codes  # Leeds Teaching Hospitals, a GP practice
    assert all(is_valid_ods_code(code) for code in codes)
    sites = {code for f in files for code in uk_core_identifiers(f.name, ODS_SITE_SYSTEM)}
    assert "RR813" in sites
    assert all(is_valid_ods_code(code) for code in sites)


@pytest.mark.parametrize("code", ["RR8", "RR813", "A81001", "G7H8J", "Y12345", "RR8D7"])
def test_valid_ods_codes(code: str) -> None:
    assert is_valid_ods_code(code)


@pytest.mark.parametrize("code", ["", "RR", "rr8", "RR8 13", "RR8-13", "ABCDEFGHIJKLM", "RR8\n"])
def test_invalid_ods_codes(code: str) -> None:
    assert not is_valid_ods_code(code)


def test_local_identifier_system() -> None:
    assert local_identifier_system("RR8") == "https://fhir.joinedup.nhs.uk/Id/RR8/mrn"
    assert local_identifier_system(" rr8 ", "patient-id") == (
        "https://fhir.joinedup.nhs.uk/Id/RR8/patient-id"
    )


@pytest.mark.parametrize(
    ("ods", "kind"), [("R!", "mrn"), ("RR8", "MRN"), ("RR8", "a/b"), ("RR8", "")]
)
def test_local_identifier_system_rejects_bad_parts(ods: str, kind: str) -> None:
    with pytest.raises(ValueError, match=r"ODS code|slug"):
        local_identifier_system(ods, kind)


# --- resource ids and patient keys ----------------------------------------------------------------


def test_resource_id_is_uuid5_of_feed_type_and_source_id() -> None:
    rid = resource_id("rr8-pas", "Encounter", "V123")
    assert rid == str(uuid.uuid5(JOINEDUP_NAMESPACE, "rr8-pas|Encounter|V123"))
    assert uuid.UUID(rid).version == 5
    assert rid == resource_id("rr8-pas", "Encounter", "V123")  # deterministic
    assert rid != resource_id("rr8-pas", "Condition", "V123")
    assert rid != resource_id("other-feed", "Encounter", "V123")


def test_namespace_is_documented_derivation() -> None:
    derived = uuid.uuid5(uuid.NAMESPACE_URL, "https://fhir.joinedup.nhs.uk/Id/resource")
    assert derived == JOINEDUP_NAMESPACE
    # Pinned: changing the namespace would re-key every resource ever stored.
    assert resource_id("f", "Patient", "1") == str(uuid.uuid5(derived, "f|Patient|1"))


def test_patient_key() -> None:
    assert patient_key("9434765919", "rr8-pas", "MRN1") == "9434765919"
    assert patient_key("943 476 5919", "rr8-pas", "MRN1") == "9434765919"
    assert patient_key("9434765918", "rr8-pas", "MRN1") == "rr8-pas|MRN1"
    assert patient_key(None, "rr8-pas", "MRN1") == "rr8-pas|MRN1"
    assert patient_key("", "gp-a81001", "42") == "gp-a81001|42"


def test_nhs_number_of_patient() -> None:
    patient = {
        "resourceType": "Patient",
        "identifier": [
            {"system": "https://fhir.joinedup.nhs.uk/Id/RR8/mrn", "value": "9434765919"},
            {"system": NHS_NUMBER_SYSTEM, "value": "9434765918"},
            {"system": NHS_NUMBER_SYSTEM, "value": "943 476 5919"},
        ],
    }
    assert nhs_number_of(patient) == "9434765919"
    assert nhs_number_of({"resourceType": "Patient"}) is None
    only_local = {"identifier": [{"system": "urn:x", "value": "9434765919"}]}
    assert nhs_number_of(only_local) is None
    single = {"identifier": {"system": NHS_NUMBER_SYSTEM, "value": "9449307539"}}
    assert nhs_number_of(single) == "9449307539"
    assert nhs_number_of({"identifier": [{"system": NHS_NUMBER_SYSTEM}]}) is None
