"""A parsed HL7 v2 message, read tolerantly.

python-hl7 does the parsing (separators from MSH-1/MSH-2, repetitions, components,
sub-components, escape sequences). This module adds what real feeds need around it:

* only the segments we map are parsed. python-hl7 builds a container for every field,
  component and sub-component, which costs a few microseconds each, and a hospital message
  is mostly segments we never read (NK1, IN1, GT1, ROL, Z-segments): those are left as text.
  Z-segments are therefore ignored, and kept only in the dead-letter copy of a message we
  refuse.
* a field, repetition or component that is absent reads as ``""``, never as an error, so
  optional fields may be missing and a v2.2 message reads like a v2.8 one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import hl7
from hl7.exceptions import ParseException
from hl7.util import unescape

from ingest_acute.er7 import Decoded
from ingest_acute.outcome import ErrorCode, Rejected

MAPPED_SEGMENTS = frozenset(
    {"MSH", "EVN", "PID", "PD1", "PV1", "PV2", "MRG", "DG1", "AL1", "ORC", "OBR", "OBX"}
)
# What an empty composite is made of: separators, and the quotes of an HL7 "null" (""").
_EMPTY_MARKS = ' ^&~"'
# HL7's explicit null: "the value is to be deleted". There is nothing to map either way.
_HL7_NULL = '""'
SUPPORTED_VERSIONS = ("2.1", "2.2", "2.3", "2.4", "2.5", "2.6", "2.7", "2.8", "2.9")


class Segment:
    """One segment; ``value(7)`` is field 7 (component 1), ``""`` when absent.

    Values are read from python-hl7's parse tree the way its ``extract_field`` reads them
    (the first leaf of a deeper branch, escape sequences resolved), but an absent repetition,
    component or sub-component is ``""`` rather than an ``IndexError``, and the tree is walked
    with plain list indexing: mapping reads a hundred values a message, and python-hl7's
    1-based accessors cost several times more.
    """

    __slots__ = ("_segment", "name")

    def __init__(self, segment: hl7.Segment) -> None:
        self._segment = segment
        self.name = str(segment[0])

    def value(
        self, field: int, component: int = 1, subcomponent: int = 1, repetition: int = 1
    ) -> str:
        node = _child(self._segment, field)  # index 0 is the segment name
        if node is None:
            return ""
        positions = (repetition, component, subcomponent)
        for depth, position in enumerate(positions):
            if isinstance(node, str):
                # python-hl7 keeps a value without separators as plain text: it is the first
                # repetition, component and sub-component, and nothing else
                return self._leaf(node, field) if set(positions[depth:]) == {1} else ""
            node = _child(node, position - 1)
            if node is None:
                return ""
        while not isinstance(node, str):  # deeper than asked: its first leaf
            node = _child(node, 0)
            if node is None:
                return ""
        return self._leaf(node, field)

    def _leaf(self, text: str, field: int) -> str:
        if self.name == "MSH" and field in (1, 2):
            return text  # the separators themselves
        if self._segment.esc in text:
            text = unescape(self._segment, text)
        text = text.strip()
        return "" if text == _HL7_NULL else text

    def raw(self, field: int, repetition: int = 1) -> str:
        """The text of one repetition as sent (still escaped, separators and all)."""
        field_node = _child(self._segment, field)
        node = _child(field_node, repetition - 1) if field_node is not None else None
        return "" if node is None else str(node)

    def repetitions(self, field: int) -> list[Repetition]:
        """The non-empty repetitions of a field (``~``), each read on its own."""
        node = _child(self._segment, field)
        if node is None or isinstance(node, str):
            return []
        return [
            Repetition(self, field, number)
            for number, rep in enumerate(node, start=1)
            if _has_content(rep)
        ]

    def first(self, field: int) -> Repetition | None:
        found = self.repetitions(field)
        return found[0] if found else None

    def __repr__(self) -> str:
        return f"Segment({self.name})"


def _child(node: Any, index: int) -> Any:
    return list.__getitem__(node, index) if 0 <= index < len(node) else None


def _has_content(node: Any) -> bool:
    if isinstance(node, str):
        return bool(node.strip(_EMPTY_MARKS))
    return any(_has_content(child) for child in node)


class Repetition:
    """One repetition of one field: a composite whose components read with ``value(n)``."""

    __slots__ = ("field", "number", "segment")

    def __init__(self, segment: Segment, field: int, number: int) -> None:
        self.segment = segment
        self.field = field
        self.number = number

    def value(self, component: int = 1, subcomponent: int = 1) -> str:
        return self.segment.value(self.field, component, subcomponent, self.number)

    def subcomponents(self, component: int) -> list[str]:
        values = []
        for sub in range(1, 10):
            text = self.value(component, sub)
            if not text and sub > 1:
                break
            values.append(text)
        return [v for v in values if v]

    @property
    def is_empty(self) -> bool:
        return not self.segment.raw(self.field, self.number).strip(_EMPTY_MARKS)


@dataclass(frozen=True)
class Header:
    """What MSH says about the message, as plain strings."""

    sending_application: str
    sending_facility: tuple[str, ...]  # the whole field, then HD-1 and HD-2, as feeds name it
    timestamp: str
    message_type: str
    trigger: str
    structure: str
    control_id: str
    processing_id: str
    version: str

    @property
    def kind(self) -> str:
        return f"{self.message_type}^{self.trigger}"


class V2Message:
    """A parsed message: its header and the mapped segments, in order."""

    def __init__(self, message: hl7.Message, decoded: Decoded) -> None:
        self.parsed = message
        self.decoded = decoded
        self.segments = [Segment(s) for s in message]
        msh = self.segments[0]
        self.msh = msh
        facility = msh.first(4)
        facility_names = [msh.value(4)] if msh.value(4) else []
        if facility is not None:
            full = "^".join(facility.value(c) for c in (1, 2, 3)).rstrip("^")
            facility_names = [full, facility.value(1), facility.value(2)]
        self.header = Header(
            sending_application=msh.value(3),
            sending_facility=tuple(dict.fromkeys(n for n in facility_names if n)),
            timestamp=msh.value(7),
            message_type=msh.value(9, 1).upper(),
            trigger=msh.value(9, 2).upper(),
            structure=msh.value(9, 3).upper(),
            control_id=msh.value(10),
            processing_id=msh.value(11),
            version=msh.value(12),
        )

    def first(self, name: str) -> Segment | None:
        return next((s for s in self.segments if s.name == name), None)

    def all(self, name: str) -> list[Segment]:
        return [s for s in self.segments if s.name == name]


def parse(decoded: Decoded) -> V2Message:
    """Parse the mapped segments of a decoded message; ``Rejected`` when MSH is unusable."""
    lines = decoded.text.split("\r")
    kept = [line for line in lines if line[:3] in MAPPED_SEGMENTS and _is_segment(line)]
    if not kept or not kept[0].startswith("MSH"):
        raise Rejected.reject("the first segment must be MSH", ErrorCode.SEGMENT_SEQUENCE)
    try:
        parsed = hl7.parse("\r".join(kept))
    except (ParseException, ValueError, IndexError) as error:
        raise Rejected.reject(
            f"unreadable MSH segment: {error}", ErrorCode.SEGMENT_SEQUENCE
        ) from error
    message = V2Message(parsed, decoded)
    _check_header(message.header)
    return message


def _is_segment(line: str) -> bool:
    # "PID|..." and "PID" alone are segments; "PIDX|..." or "PI" are not.
    return len(line) == 3 or not line[3].isalnum()


def _check_header(header: Header) -> None:
    if not header.control_id:
        raise Rejected.reject(
            "MSH-10 (message control id) is empty", ErrorCode.REQUIRED_FIELD_MISSING, "MSH", 10
        )
    if not header.message_type:
        raise Rejected.reject(
            "MSH-9 (message type) is empty", ErrorCode.REQUIRED_FIELD_MISSING, "MSH", 9
        )
    if not header.version.startswith(SUPPORTED_VERSIONS):
        raise Rejected.reject(
            f"MSH-12 version {header.version!r} is not supported (2.1 to 2.9)",
            ErrorCode.UNSUPPORTED_VERSION,
            "MSH",
            12,
        )
