"""ACKs as each HL7 version expects them, readable by a second parser (hl7apy)."""

from __future__ import annotations

import hl7
import pytest
from hl7apy.parser import parse_message

from ingest_acute.ack import acknowledge
from ingest_acute.outcome import AckCode, ErrorCode, Problem

PROBLEM = Problem("no patient identifier in PID-3 | ^", ErrorCode.REQUIRED_FIELD_MISSING, "PID", 3)


def source(version: str) -> hl7.Message:
    return hl7.parse(
        f"MSH|^~\\&|PAS|RCB|JOINEDUP|ACUTE|20240105||ADT^A01^ADT_A01|CTRL9|P|{version}\rPID|1"
    )


@pytest.mark.parametrize("version", ["2.3", "2.4", "2.5", "2.5.1", "2.6", "2.7", "2.8"])
def test_every_ack_parses_with_a_second_parser(version: str) -> None:
    for code, problem in ((AckCode.ACCEPT, None), (AckCode.ERROR, PROBLEM)):
        text = acknowledge(source(version), code, problem, ["PID-7: left out"])
        parsed = parse_message(text, find_groups=False)
        assert parsed.msh.msh_9.msh_9_1.value == "ACK"
        assert parsed.msa.msa_1.value == str(code)
        assert parsed.msa.msa_2.value == "CTRL9"
        assert parsed.msh.msh_3.value == "JOINEDUP"  # we answer as the application addressed
        assert parsed.msh.msh_5.value == "PAS"


def test_v25_and_later_carry_the_reason_in_err() -> None:
    text = acknowledge(source("2.5"), AckCode.ERROR, PROBLEM, ["PID-7: left out"])
    msa, error, warning = text.strip("\r").split("\r")[1:]
    assert msa == "MSA|AE|CTRL9|no patient identifier in PID-3 \\F\\ \\S\\"
    assert error == (
        "ERR||PID^1^3|101^Required field missing^HL70357|E||||"
        "no patient identifier in PID-3 \\F\\ \\S\\"
    )
    assert warning == "ERR|||102^Data type error^HL70357|W||||PID-7: left out"


def test_v27_drops_the_withdrawn_msa3() -> None:
    text = acknowledge(source("2.7"), AckCode.REJECT, PROBLEM)
    assert "\rMSA|AR|CTRL9\r" in text


def test_before_v25_the_reason_is_in_msa3_and_err1() -> None:
    text = acknowledge(source("2.4"), AckCode.ERROR, PROBLEM, ["ignored before 2.5"])
    msa, error = text.strip("\r").split("\r")[1:]
    assert msa.startswith("MSA|AE|CTRL9|no patient identifier")
    assert error == "ERR|PID^1^3^101&Required field missing&HL70357"


def test_a_message_without_a_usable_header_still_gets_an_answer() -> None:
    text = acknowledge(None, AckCode.REJECT, Problem("not HL7"))
    assert text.split("\r")[1] == "MSA|AR||not HL7"
    parse_message(text, find_groups=False)
    # MSH-9 with only the message type, and too few fields for python-hl7's create_ack
    short = acknowledge(hl7.parse("MSH|^~\\&|A|B|||x||ADT|C1"), AckCode.REJECT, Problem("no"))
    assert short.split("\r")[1].startswith("MSA|AR|C1")
