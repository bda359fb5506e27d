"""Who a message is about: the NHS number and the hospital number (MRN) in PID-3.

Feeds write the NHS number in several ways (DESIGN.md "Codes"); all of these are read:

* ``9434765919^^^NHS^NH`` (type NH, authority NHS) and the NHS number OID as authority;
* type ``NHS`` or ``HN`` with no authority, or authority ``NHS`` with no type;
* a 10-digit number with no type code at all, its authority empty or an ODS code. This last
  form is only taken when no repetition says outright that it is the NHS number, and only
  with a correct modulus-11 check digit.

An NHS number that fails the check, or that the feed is configured to send as a placeholder,
is left out with a warning. The MRN is the repetition typed MR (then PI, PT/PN, HN, untyped);
when PID-3 has none, PID-2 and PID-4 (older feeds) are looked at.

A patient's *source id*, from which its resource id is derived, is its MRN, or
``nhs:<number>`` for a patient known to this feed only by NHS number.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Iterable
from dataclasses import dataclass, field
from typing import Any

from fhir_common.identifiers import (
    NHS_NUMBER_SYSTEM,
    is_valid_ods_code,
    local_identifier_system,
    normalise_nhs_number,
)
from ingest_acute.datatypes import DataTypes
from ingest_acute.outcome import ErrorCode, Rejected
from ingest_acute.parsing import Repetition, Segment
from ingest_acute.terminology import V2_IDENTIFIER_TYPE

Json = dict[str, Any]

NHS_NUMBER_OID = "2.16.840.1.113883.2.1.4.1"
_NHS_TYPES = frozenset({"NH", "NHS", "NHSNBR", "NHSNO", "HN"})
_NHS_AUTHORITIES = frozenset({"NHS", "NHSNBR", "NHS NUMBER", "NHSNUMBER", NHS_NUMBER_OID})
# Identifier types that name a patient record (best first); others (SS, DL, AN, VN...) do not.
_MRN_RANK = {"MR": 0, "PI": 1, "PT": 2, "PN": 2, "HN": 3, "": 4}
_TYPE_CODE = re.compile(r"^[A-Z]{2,5}$")
_SLUG = re.compile(r"[^a-z0-9]+")
NHS_SOURCE_PREFIX = "nhs:"


@dataclass(frozen=True)
class PatientIdentity:
    nhs_number: str | None
    mrn: str | None
    identifiers: tuple[Json, ...] = ()  # every identifier to put on the Patient
    warnings: tuple[str, ...] = field(default=(), compare=False)

    @property
    def source_id(self) -> str:
        if self.mrn:
            return self.mrn
        assert self.nhs_number
        return f"{NHS_SOURCE_PREFIX}{self.nhs_number}"


@dataclass(frozen=True)
class _Candidate:
    rep: Repetition
    value: str
    kind: str  # CX-5 identifier type, upper case
    authority: tuple[str, ...]  # CX-4 namespace id and universal id, upper case

    @classmethod
    def of(cls, rep: Repetition) -> _Candidate:
        authority = (rep.value(4, 1).upper(), rep.value(4, 2).upper())
        return cls(rep, rep.value(1), rep.value(5).upper(), authority)

    @property
    def claims_nhs(self) -> bool:
        return self.kind in _NHS_TYPES or any(a in _NHS_AUTHORITIES for a in self.authority)

    @property
    def may_be_nhs(self) -> bool:
        """Untyped, and its authority (if any) an ODS code: the loosest form feeds use."""
        namespace = self.authority[0]
        return not self.kind and (not namespace or is_valid_ods_code(namespace))


def identify(
    pid: Segment, types: DataTypes, placeholders: Collection[str] = (), where: str = "PID"
) -> PatientIdentity:
    """The identity in a PID (or, with ``where="MRG"``, in an MRG) segment.

    Raises ``Rejected`` (AE 101) when neither a usable NHS number nor an MRN is there.
    """
    fields = (1, 4) if where == "MRG" else (3, 2, 4)
    primary = [_Candidate.of(r) for r in pid.repetitions(fields[0]) if r.value(1)]
    secondary = [_Candidate.of(r) for f in fields[1:] for r in pid.repetitions(f) if r.value(1)]
    warnings: list[str] = []
    nhs, nhs_candidate = _nhs_number(primary, secondary, placeholders, warnings, where)
    rest = [c for c in primary + secondary if c is not nhs_candidate and not c.claims_nhs]
    mrn_candidate = _best_mrn([c for c in rest if c in primary]) or _best_mrn(rest)
    if nhs is None and mrn_candidate is None:
        raise Rejected.error(
            f"no patient identifier: {where}-{fields[0]} has neither a valid NHS number nor a "
            "hospital number",
            ErrorCode.REQUIRED_FIELD_MISSING,
            where,
            fields[0],
        )
    identifiers: list[Json] = []
    if nhs:
        identifiers.append({"system": NHS_NUMBER_SYSTEM, "value": nhs})
    if mrn_candidate is not None:
        identifiers.append(mrn_identifier(types.ods, mrn_candidate.value))
    identifiers.extend(_other_identifier(types.ods, c) for c in rest if c is not mrn_candidate)
    for warning in warnings:
        types.warnings.append(warning)
    return PatientIdentity(
        nhs_number=nhs,
        mrn=mrn_candidate.value if mrn_candidate else None,
        identifiers=tuple(_unique(identifiers)),
        warnings=tuple(warnings),
    )


def _nhs_number(
    primary: list[_Candidate],
    secondary: list[_Candidate],
    placeholders: Collection[str],
    warnings: list[str],
    where: str,
) -> tuple[str | None, _Candidate | None]:
    explicit = [c for c in primary + secondary if c.claims_nhs]
    loose = [c for c in primary if c.may_be_nhs] if not explicit else []
    for candidate in explicit + loose:
        number = normalise_nhs_number(candidate.value)
        if number is None:
            if candidate.claims_nhs:
                warnings.append(f"{where}: {candidate.value!r} is not a valid NHS number; left out")
            continue
        if number in placeholders:
            warnings.append(f"{where}: NHS number {number} is a placeholder; left out")
            continue
        return number, candidate
    return None, None


def _best_mrn(candidates: Iterable[_Candidate]) -> _Candidate | None:
    ranked = [c for c in candidates if c.kind in _MRN_RANK]
    return min(ranked, key=lambda c: _MRN_RANK[c.kind], default=None)


def mrn_system(ods: str) -> str:
    return local_identifier_system(ods, "mrn")


def mrn_identifier(ods: str, value: str) -> Json:
    return {
        "use": "usual",
        "type": {"coding": [{"system": V2_IDENTIFIER_TYPE, "code": "MR"}]},
        "system": mrn_system(ods),
        "value": value,
    }


def _other_identifier(ods: str, candidate: _Candidate) -> Json:
    kind = _SLUG.sub("-", (candidate.kind or candidate.authority[0] or "patient-id").lower())
    identifier: Json = {"system": local_identifier_system(ods, kind.strip("-") or "patient-id")}
    if _TYPE_CODE.match(candidate.kind):
        identifier["type"] = {"coding": [{"system": V2_IDENTIFIER_TYPE, "code": candidate.kind}]}
    identifier["value"] = candidate.value
    return identifier


def _unique(identifiers: list[Json]) -> list[Json]:
    seen: set[tuple[str, str]] = set()
    kept = []
    for identifier in identifiers:
        key = (identifier.get("system", ""), identifier["value"])
        if key not in seen:
            seen.add(key)
            kept.append(identifier)
    return kept
