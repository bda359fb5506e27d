"""From the bytes a sender sent to ER7 text that python-hl7 parses.

Real feeds differ in ways the standard does not allow, and we take them as they come:

* a UTF-8 byte-order mark before ``MSH`` (the FHIR-Converter samples have one);
* segments ended by CR (the standard), CRLF or LF (the NHS England samples use LF), even
  mixed; an LF that does not start a segment (``\nPID|``) is data inside a field (free
  text) and stays;
* the character set named in MSH-18 (HL7 table 0211), or none. A declared set the bytes do
  not fit (``ASCII`` over UTF-8, say) is read as UTF-8, then Windows-1252, with a warning,
  rather than refused: the bytes keep their meaning and the sender learns of it in the ACK.

What cannot be read at all (no ``MSH`` segment, binary content, UTF-16/32) is refused with
``AR``. A POSTed body may hold several messages (and batch envelopes): ``split_messages``
cuts it into one byte string per message.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from functools import cached_property

import hl7

from ingest_acute.outcome import ErrorCode, Rejected

UTF8_BOM = b"\xef\xbb\xbf"
_UTF16_BOMS = (b"\xff\xfe", b"\xfe\xff")

# HL7 table 0211 (MSH-18) -> Python codec. Unknown names are refused (AR 103).
CHARSETS = {
    "": "utf-8",  # not declared: see FALLBACKS
    "ASCII": "ascii",
    "ISO IR6": "ascii",
    "8859/1": "latin-1",
    "ISO IR100": "latin-1",
    "8859/2": "iso8859-2",
    "ISO IR101": "iso8859-2",
    "8859/3": "iso8859-3",
    "8859/4": "iso8859-4",
    "8859/5": "iso8859-5",
    "ISO IR144": "iso8859-5",
    "8859/6": "iso8859-6",
    "ISO IR127": "iso8859-6",
    "8859/7": "iso8859-7",
    "ISO IR126": "iso8859-7",
    "8859/8": "iso8859-8",
    "ISO IR138": "iso8859-8",
    "8859/9": "iso8859-9",
    "ISO IR148": "iso8859-9",
    "8859/15": "iso8859-15",
    "UNICODE": "utf-8",  # v2.3-2.4 "UNICODE" without an encoding: every feed we know means UTF-8
    "UNICODE UTF-8": "utf-8",
    "UTF-8": "utf-8",
    "ISO IR192": "utf-8",
    "GB 18030-2000": "gb18030",
    "BIG-5": "big5",
    "KS X 1001": "euc-kr",
    "WINDOWS-1252": "cp1252",
    "CP1252": "cp1252",
}
# Byte-level encodings that cannot carry an ER7 message we can cut into segments.
_UNSUPPORTED_CHARSETS = frozenset({"UNICODE UTF-16", "UNICODE UTF-32"})
# Tried in turn when the declared set does not fit; latin-1 always succeeds.
FALLBACKS = ("utf-8", "cp1252", "latin-1")
# A message that is more than this share control characters is binary, not text.
_MAX_CONTROL_SHARE = 0.05
_CONTROL_BYTES = bytes(b for b in range(0x20) if b not in b"\r\n\t")


@dataclass(frozen=True)
class Decoded:
    """One message as text: CR-ended segments, the codec it was read with, and any warning."""

    text: str
    codec: str
    warnings: list[str] = field(default_factory=list)

    @cached_property
    def digest(self) -> str:
        """What identifies the content: resending the same message gives the same digest."""
        return hashlib.sha256(self.text.encode("utf-8", "surrogatepass")).hexdigest()


def decode(raw: bytes) -> Decoded:
    """Read one message's bytes as ER7 text; ``Rejected`` (AR) when it is not HL7 v2 text."""
    data = strip_bom(raw).strip(b" \t\r\n\x00")
    if not data:
        raise Rejected.reject("empty message", ErrorCode.REQUIRED_FIELD_MISSING)
    if raw.startswith(_UTF16_BOMS) or data[:1] == b"\x00" or data[1:2] == b"\x00":
        raise Rejected.reject("UTF-16 and UTF-32 are not supported: send UTF-8")
    if not data.startswith(b"MSH") or len(data) < 8:
        shown = "".join(c if c.isprintable() else "." for c in data[:20].decode("latin-1"))
        raise Rejected.reject(
            f"not an HL7 v2 message: it must begin with an MSH segment, not {shown!r}",
            ErrorCode.SEGMENT_SEQUENCE,
        )
    if _is_binary(data):
        raise Rejected.reject("binary content: an HL7 v2 ER7 message is text")
    declared = declared_charset(data)
    if declared in _UNSUPPORTED_CHARSETS:
        raise Rejected.reject(
            f"MSH-18 character set {declared!r} is not supported: send UTF-8",
            ErrorCode.TABLE_VALUE_NOT_FOUND,
            "MSH",
            18,
        )
    codec = CHARSETS.get(declared)
    if codec is None:
        raise Rejected.reject(
            f"MSH-18 character set {declared!r} is not in HL7 table 0211",
            ErrorCode.TABLE_VALUE_NOT_FOUND,
            "MSH",
            18,
        )
    text, used = _decode_text(data, codec)
    warnings = []
    if declared and used != codec:
        warnings.append(f"MSH-18 says {declared} but the message is not; it was read as {used}")
    return Decoded(normalise_segment_ends(text), used, warnings)


def strip_bom(raw: bytes) -> bytes:
    return raw[len(UTF8_BOM) :] if raw.startswith(UTF8_BOM) else raw


def declared_charset(data: bytes) -> str:
    """MSH-18's first repetition, upper-cased; "" when absent.

    Read from the bytes, before decoding: every character set of table 0211 that we accept
    keeps ASCII bytes as they are, so the MSH segment reads the same in all of them.
    """
    end = len(data)
    for terminator in (b"\r", b"\n"):
        found = data.find(terminator)
        if found != -1:
            end = min(end, found)
    msh = data[:end]
    separator = msh[3:4]
    fields = msh.split(separator)  # fields[0] is "MSH", so MSH-n is fields[n - 1]
    if len(fields) < 18:
        return ""
    repetition = fields[1][1:2] or b"~"  # MSH-2 is component, repetition, escape, sub
    first = fields[17].split(repetition)[0]
    return first.decode("ascii", "replace").strip().upper()


def _is_binary(data: bytes) -> bool:
    if b"\x00" in data:
        return True
    controls = len(data) - len(data.translate(None, _CONTROL_BYTES))
    return controls > len(data) * _MAX_CONTROL_SHARE


def _decode_text(data: bytes, codec: str) -> tuple[str, str]:
    for candidate in (codec, *FALLBACKS):
        try:
            return data.decode(candidate), candidate
        except UnicodeDecodeError:
            continue
    raise AssertionError("latin-1 decodes any bytes")  # pragma: no cover


def normalise_segment_ends(text: str) -> str:
    """CR-ended segments, whatever the sender used; empty segments dropped."""
    segments = [s for s in _cr_ended(text).split("\r") if s.strip()]
    return "\r".join(segments) + "\r"


def _cr_ended(text: str) -> str:
    """CR, CRLF, and an LF that starts a segment (``\nPID|``) end segments; any other LF is
    data inside a field (free text) and stays."""
    separator = text[3] if text[:3] in {"MSH", "FHS", "BHS"} and len(text) > 3 else "|"
    pattern = _SEGMENT_ENDS.get(separator)
    if pattern is None:
        pattern = re.compile(r"\r\n?|\n(?=[A-Z0-9]{3}" + re.escape(separator) + r")")
        _SEGMENT_ENDS[separator] = pattern
    return pattern.sub("\r", text)


_SEGMENT_ENDS: dict[str, re.Pattern[str]] = {}


def split_messages(body: bytes) -> list[bytes]:
    """The messages of a POSTed body, each as its own bytes, in order.

    python-hl7's ``split_file`` does the cutting (and drops FHS/BHS/BTS/FTS envelopes). It
    works on text, so the body is read as latin-1, which maps every byte to one character
    and back: each message keeps its own bytes and is decoded later with its own MSH-18.
    Anything before the first MSH is returned as a message of its own, so that it is refused
    and kept rather than dropped.
    """
    text = _cr_ended(strip_bom(body).decode("latin-1"))
    messages: list[bytes] = []
    first = _first_header(text)
    if first == -1:
        return [body] if body.strip() else []
    preamble = text[:first]
    if _outside_envelope(preamble).strip():
        messages.append(preamble.encode("latin-1"))
    messages.extend(m.encode("latin-1") for m in hl7.split_file(text[first:]))
    return messages


def _first_header(text: str) -> int:
    if text.startswith("MSH"):
        return 0
    found = text.find("\rMSH")
    return found + 1 if found != -1 else -1


def _outside_envelope(preamble: str) -> str:
    """The preamble without batch and file header segments, which are not content."""
    kept = [s for s in preamble.split("\r") if s.strip()[:3] not in {"FHS", "BHS"}]
    return "\r".join(kept).strip(" \t\x0b\x1c")
