"""The NHS number in every form DESIGN.md and the samples use, and the hospital number."""

from __future__ import annotations

from zoneinfo import ZoneInfo

import pytest

from fhir_common.identifiers import NHS_NUMBER_SYSTEM
from ingest_acute import er7, parsing
from ingest_acute.datatypes import DataTypes
from ingest_acute.identity import identify
from ingest_acute.outcome import AckCode, Rejected

VALID = "9434765919"
INVALID = "9434765918"


def pid(pid3: str, pid2: str = "", pid4: str = "") -> parsing.Segment:
    text = f"MSH|^~\\&|A|RCB|||20100101||ADT^A01|X|P|2.4\rPID|1|{pid2}|{pid3}|{pid4}|SMITH^J\r"
    segment = parsing.parse(er7.decode(text.encode())).first("PID")
    assert segment is not None
    return segment


def types() -> DataTypes:
    return DataTypes("RCB", ZoneInfo("Europe/London"))


@pytest.mark.parametrize(
    "pid3",
    [
        f"{VALID}^^^NHS^NH",  # DESIGN.md's form
        f"{VALID}^^^NHS",  # the NHS England samples: authority, no type
        f"{VALID}^^^^NH",  # type only
        f"{VALID}^^^^HN",  # feeds vary: HN
        f"{VALID}^^^RCB^NH",  # ODS code as assigning authority
        f"{VALID}^^^2.16.840.1.113883.2.1.4.1",  # the NHS number OID
        f"{VALID}^^^&2.16.840.1.113883.2.1.4.1&ISO^NH",
        f"{VALID}^^^RCB",  # no type code, ODS authority
        VALID,  # nothing but the number
        "943 476 5919^^^NHS^NH",  # formatted for people
        f"R123^^^RCB^MR~{VALID}^^^NHS^NH",  # after the MRN
    ],
)
def test_nhs_number_in_every_variant(pid3: str) -> None:
    identity = identify(pid(pid3), types())
    assert identity.nhs_number == VALID
    assert identity.identifiers[0] == {"system": NHS_NUMBER_SYSTEM, "value": VALID}


def test_an_invalid_nhs_number_is_left_out_with_a_warning() -> None:
    read = types()
    identity = identify(pid(f"{INVALID}^^^NHS^NH~R123^^^RCB^MR"), read)
    assert identity.nhs_number is None
    assert identity.mrn == "R123"
    assert identity.source_id == "R123"
    assert "not a valid NHS number" in read.warnings[0]


def test_a_placeholder_nhs_number_is_ignored_when_configured() -> None:
    read = types()
    identity = identify(pid("3333333333^^^NHS~R9^^^RCB^MR"), read, placeholders={"3333333333"})
    assert identity.nhs_number is None
    assert "placeholder" in read.warnings[0]
    # without the setting it is a valid NHS number (the modulus-11 check passes)
    assert identify(pid("3333333333^^^NHS"), types()).nhs_number == "3333333333"


def test_an_untyped_ten_digit_mrn_is_not_an_nhs_number_when_one_is_named() -> None:
    identity = identify(pid(f"{VALID}^^^RCB~4010232137^^^NHS^NH"), types())
    assert identity.nhs_number == "4010232137"
    assert identity.mrn == VALID


@pytest.mark.parametrize(
    ("pid3", "pid2", "mrn"),
    [
        ("X1^^^RCB^PI~X2^^^RCB^MR", "", "X2"),  # MR before PI
        ("123456789^^^USSSA^SS~PATID^^^H^MR", "", "PATID"),  # a social security number is not
        ("555-44-4444", "", "555-44-4444"),  # untyped
        ("", "OLD77^^^RCB^MR", "OLD77"),  # v2.3 feeds: PID-2
    ],
)
def test_the_hospital_number(pid3: str, pid2: str, mrn: str) -> None:
    identity = identify(pid(pid3, pid2), types())
    assert identity.mrn == mrn
    assert identity.source_id == mrn
    assert identity.identifiers[0]["system"] == "https://fhir.joinedup.nhs.uk/Id/RCB/mrn"


def test_a_patient_known_only_by_nhs_number_has_it_as_source() -> None:
    assert identify(pid(f"{VALID}^^^NHS"), types()).source_id == f"nhs:{VALID}"


def test_no_identifier_at_all_is_an_application_error() -> None:
    with pytest.raises(Rejected) as refused:
        identify(pid(f"{INVALID}^^^NHS^NH"), types())
    assert refused.value.ack is AckCode.ERROR
    assert refused.value.problem.where == "PID-3"
