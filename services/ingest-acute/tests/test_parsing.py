"""Parsing with python-hl7: versions, repetitions and components, Z-segments, missing fields,
cross-checked against a second parser (hl7apy)."""

from __future__ import annotations

from typing import Any

import pytest
from hl7apy.parser import parse_message

from ingest_acute import er7, parsing
from ingest_acute.outcome import AckCode, ErrorCode, Rejected


def parse(text: str) -> parsing.V2Message:
    return parsing.parse(er7.decode(text.encode()))


@pytest.mark.parametrize(
    "version", ["2.2", "2.3", "2.3.1", "2.4", "2.5", "2.5.1", "2.6", "2.7", "2.8"]
)
def test_every_version_from_22_to_28_is_read(version: str) -> None:
    message = parse(f"MSH|^~\\&|PAS|RCB|||20100101||ADT^A01|X|P|{version}\rPID|1||123^^^RCB^MR\r")
    assert message.header.version == version
    assert message.first("PID").value(3) == "123"  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("header", "code"),
    [
        ("MSH|^~\\&|PAS|RCB|||20100101||ADT^A01|X|P|3.0", ErrorCode.UNSUPPORTED_VERSION),
        ("MSH|^~\\&|PAS|RCB|||20100101||ADT^A01||P|2.4", ErrorCode.REQUIRED_FIELD_MISSING),
        ("MSH|^~\\&|PAS|RCB|||20100101|||X|P|2.4", ErrorCode.REQUIRED_FIELD_MISSING),
    ],
)
def test_an_unusable_header_is_rejected(header: str, code: ErrorCode) -> None:
    with pytest.raises(Rejected) as refused:
        parse(header + "\rPID|1\r")
    assert refused.value.ack is AckCode.REJECT
    assert refused.value.problem.code is code


def test_repetitions_components_and_subcomponents() -> None:
    message = parse(
        "MSH|^~\\&|A|B|||20100101||ADT^A01|X|P|2.5\r"
        "PID|1||111^^^NHS^NH~222^^^RCB^MR||EVERYMAN&van^ADAM^A~SMITH^JOHN\r"
    )
    pid = message.first("PID")
    assert pid is not None
    assert [r.value(1) for r in pid.repetitions(3)] == ["111", "222"]
    assert pid.repetitions(5)[0].value(1, 2) == "van"
    assert pid.repetitions(5)[1].value(2) == "JOHN"


def test_missing_optional_fields_read_as_empty() -> None:
    pid = parse("MSH|^~\\&|A|B|||20100101||ADT^A01|X|P|2.4\rPID|1\r").first("PID")
    assert pid is not None
    assert pid.value(3) == pid.value(30, 4, 2) == ""
    assert pid.repetitions(11) == []
    assert pid.first(5) is None


def test_escape_sequences_are_read_as_characters_and_hl7_null_as_empty() -> None:
    pid = parse('MSH|^~\\&|A|B|||20100101||ADT^A01|X|P|2.4\rPID|1||1||O\\T\\BRIEN^""\r').first(
        "PID"
    )
    assert pid is not None
    assert pid.value(5) == "O&BRIEN"
    assert pid.value(5, 2) == ""


def test_custom_separators_from_msh_are_honoured() -> None:
    message = parse("MSH#*!@%#A#B###20100101##ADT*A01#X#P#2.4\rPID#1##9434765919***NHS*NH\r")
    pid = message.first("PID")
    assert message.header.trigger == "A01"
    assert pid is not None
    assert pid.repetitions(3)[0].value(4) == "NHS"


def test_z_segments_and_segments_we_do_not_map_are_ignored() -> None:
    message = parse(
        "MSH|^~\\&|A|B|||20100101||ADT^A01|X|P|2.4\rPID|1||1\rZU1|garbled^^^&&&|\\\\\\\rNK1|1|X\r"
    )
    assert [s.name for s in message.segments] == ["MSH", "PID"]


def _hl7apy(text: str) -> Any:
    return parse_message(text.replace("\n", "\r"), find_groups=False)


def test_header_agrees_with_a_second_parser(samples: Any) -> None:
    for sample in samples.nhs_adt()[:10] + samples.converter()[:6]:
        decoded = er7.decode(sample.data)
        ours = parsing.parse(decoded).header
        theirs = _hl7apy(decoded.text).msh
        assert ours.control_id == theirs.msh_10.value, sample.name
        assert ours.message_type == theirs.msh_9.msh_9_1.value, sample.name
        assert ours.trigger == theirs.msh_9.msh_9_2.value, sample.name
        assert ours.sending_facility[-1] in theirs.msh_4.value, sample.name


def test_values_read_from_the_text_as_python_hl7_reads_them() -> None:
    message = parse(
        "MSH|^~\\&|PAS|RCB|||20100101||ADT^A01|X|P|2.4\r"
        "PID|1||123^^^RCB^MR~456^^^NHS^NH||SMITH\\T\\SONS^J&K^^^MR||||||"
        '29 WEST AVENUE||""\r'
    )
    pid = message.first("PID")
    assert pid is not None
    assert message.msh.value(1) == "|"
    assert message.msh.value(2) == "^~\\&"
    assert pid.value(3, 1, repetition=2) == "456"
    assert pid.value(3, 5, repetition=2) == "NH"
    assert pid.value(3, 1, repetition=3) == ""
    assert pid.value(5) == "SMITH&SONS"  # escape sequence resolved
    assert pid.value(5, 2, 2) == "K"
    assert pid.value(13) == ""  # HL7 null
    assert pid.raw(3, 2) == "456^^^NHS^NH"
    assert [r.number for r in pid.repetitions(3)] == [1, 2]
    # a field with no separators has one sub-component, not the same text nine times
    address = pid.first(11)
    assert address is not None
    assert address.subcomponents(1) == ["29 WEST AVENUE"]
