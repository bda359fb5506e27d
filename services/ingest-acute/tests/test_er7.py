"""Reading bytes as ER7 text: byte-order marks, segment ends, character sets, junk."""

from __future__ import annotations

import pytest

from ingest_acute import er7, parsing
from ingest_acute.outcome import AckCode, Rejected

MSH = "MSH|^~\\&|PAS|RCB|ROUTE|ROUTE|201010101418||ADT^A01^ADT_A01|CTRL1|P|2.4"
PID = "PID|1||9434765919^^^NHS^NH||SMITH^ZOË||19651213|F"


def message(*, end: str = "\r", charset: str = "", pid: str = PID) -> str:
    header = MSH + (f"||||||{charset}" if charset else "")
    return end.join((header, "EVN||201010101400", pid)) + end


@pytest.mark.parametrize("end", ["\r", "\n", "\r\n"])
def test_any_segment_end_reads_the_same(end: str) -> None:
    decoded = er7.decode(message(end=end).encode())
    assert decoded.text == message(end="\r")
    assert parsing.parse(decoded).first("PID") is not None


def test_a_lone_line_feed_inside_a_cr_message_is_data() -> None:
    text = MSH + "\rOBX|1|TX|x^y^LN||line one\nline two\r"
    assert er7.decode(text.encode()).text == text


def test_byte_order_mark_is_ignored_and_content_digest_is_stable() -> None:
    plain = er7.decode(message().encode())
    with_bom = er7.decode(er7.UTF8_BOM + message(end="\n").encode())
    assert with_bom.text == plain.text
    assert with_bom.digest == plain.digest


@pytest.mark.parametrize(
    ("charset", "codec"),
    [("8859/1", "latin-1"), ("ISO IR100", "latin-1"), ("UNICODE UTF-8", "utf-8"), ("", "utf-8")],
)
def test_msh18_chooses_the_character_set(charset: str, codec: str) -> None:
    raw = message(charset=charset).encode(codec)
    decoded = er7.decode(raw)
    assert decoded.codec == codec
    assert "SMITH^ZOË" in decoded.text
    assert decoded.warnings == []


def test_a_character_set_the_bytes_do_not_fit_is_read_as_utf8_with_a_warning() -> None:
    decoded = er7.decode(message(charset="ASCII").encode("utf-8"))
    assert "ZOË" in decoded.text
    assert decoded.warnings == ["MSH-18 says ASCII but the message is not; it was read as utf-8"]


def test_windows_1252_without_a_declaration_is_still_read() -> None:
    decoded = er7.decode(message().encode("cp1252"))
    assert "ZOË" in decoded.text
    assert decoded.codec == "cp1252"


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"", "empty message"),
        (b"   \r\n", "empty message"),
        (b"PID|1||123\r", "must begin with an MSH segment"),
        (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", "must begin with an MSH segment"),
        (b"MSH|^~\\&|A|B\x00\x01\x02\x03\x04\x05\x06\x07\x08", "binary content"),
        (message().encode("utf-16"), "UTF-16"),
        (message(charset="UNICODE UTF-16").encode(), "not supported"),
        (message(charset="KLINGON").encode(), "not in HL7 table 0211"),
    ],
)
def test_what_is_not_hl7_text_is_rejected(raw: bytes, reason: str) -> None:
    with pytest.raises(Rejected) as refused:
        er7.decode(raw)
    assert refused.value.ack is AckCode.REJECT
    assert reason in refused.value.problem.reason


def test_a_body_is_split_into_its_messages_with_envelopes_dropped() -> None:
    one, two = message(), message().replace("CTRL1", "CTRL2")
    body = ("FHS|^~\\&\rBHS|^~\\&\r" + one + two + "BTS|2\rFTS|1\r").encode()
    parts = er7.split_messages(er7.UTF8_BOM + body)
    assert [er7.decode(p).text for p in parts] == [one, two]


def test_junk_before_the_first_message_is_its_own_message_to_refuse() -> None:
    parts = er7.split_messages(b"hello\r" + message().encode())
    assert parts[0] == b"hello\r"
    assert len(parts) == 2


def test_a_body_without_any_msh_is_one_message() -> None:
    assert er7.split_messages(b"not hl7 at all") == [b"not hl7 at all"]
    assert er7.split_messages(b"  \n ") == []
