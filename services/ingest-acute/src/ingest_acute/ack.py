"""HL7 acknowledgements: python-hl7 builds MSH and MSA (``Message.create_ack``); we add the
reason for an AE/AR, and warnings for an AA, in the form the message's version expects.

* v2.5 and later: ERR-2 (location), ERR-3 (HL7 table 0357 code), ERR-4 (severity), ERR-8
  (the reason in words); MSA-3 as well before v2.7, which withdrew it.
* v2.1 to v2.4: MSA-3 (text message) and ERR-1 (segment^sequence^field^code&text).

A message that cannot be read at all (no MSH) is answered with an ACK built on an empty
header, MSA-2 empty: the sender still learns that, and why, we refused it.
"""

from __future__ import annotations

from collections.abc import Sequence

import hl7

from ingest_acute.outcome import AckCode, ErrorCode, Problem

RECEIVER = "JOINEDUP"
_FALLBACK_HEADER = "MSH|^~\\&|||||||ACK||P|2.5"
_LEGACY_TEXT_LIMIT = 80  # MSA-3 is ST(80) before v2.5


def acknowledge(
    source: hl7.Message | None,
    code: AckCode,
    problem: Problem | None = None,
    warnings: Sequence[str] = (),
) -> str:
    """The ACK for ``source`` (None when the message could not be parsed at all)."""
    source = source if source is not None else hl7.parse(_FALLBACK_HEADER)
    msh = source.segment("MSH")
    _ready_for_ack(msh)
    ack = source.create_ack(
        ack_code=str(code),
        application=_or(str(msh(5)) if len(msh) > 5 else "", RECEIVER),
        facility=_or(str(msh(6)) if len(msh) > 6 else "", RECEIVER),
    )
    version = _component(msh, 12)
    modern = version[:3] >= "2.5"
    msa = ack.segment("MSA")
    if problem is not None:
        if not modern or version[:3] < "2.7":
            text = problem.reason if modern else problem.reason[:_LEGACY_TEXT_LIMIT]
            msa.assign_field(ack.escape(text), 3)
        ack.append(_err(ack, problem, "E", modern))
    if modern:
        for warning in warnings:
            ack.append(_err(ack, Problem(warning, ErrorCode.DATA_TYPE), "W", modern=True))
    return str(ack)


def _err(ack: hl7.Message, problem: Problem, severity: str, modern: bool) -> hl7.Segment:
    err = ack.create_segment([ack.create_field(["ERR"])])
    code = problem.code
    if modern:
        if problem.segment:
            err.assign_field(problem.segment, 2, 1, 1)
            err.assign_field("1", 2, 1, 2)
            if problem.field:
                err.assign_field(str(problem.field), 2, 1, 3)
        err.assign_field(str(code), 3, 1, 1)
        err.assign_field(ack.escape(code.text), 3, 1, 2)
        err.assign_field("HL70357", 3, 1, 3)
        err.assign_field(severity, 4)
        err.assign_field(ack.escape(problem.reason), 8)
        return err
    err.assign_field(problem.segment, 1, 1, 1)
    err.assign_field("1" if problem.segment else "", 1, 1, 2)
    err.assign_field(str(problem.field or ""), 1, 1, 3)
    err.assign_field(f"{code}&{ack.escape(code.text)}&HL70357", 1, 1, 4)
    return err


def _ready_for_ack(msh: hl7.Segment) -> None:
    """What python-hl7's ``create_ack`` reads must be there: MSH-1 to MSH-12, and MSH-9 with
    a trigger component even when the sender gave only the message type."""
    while len(msh) <= 12:
        msh.append(msh.create_field([""]))
    kind = msh(9)
    first = kind[0] if kind else ""
    if not isinstance(first, hl7.Repetition) or len(first) < 2:
        parts = [msh.create_component([str(first)]), msh.create_component([""])]
        msh[9] = msh.create_field([msh.create_repetition(parts)])


def _component(segment: hl7.Segment, field: int) -> str:
    try:
        return str(segment.extract_field(None, field, 1, 1, 1))
    except IndexError:
        return ""


def _or(value: str, default: str) -> str:
    return value if value.strip("^") else default
