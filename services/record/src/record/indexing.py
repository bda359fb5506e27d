"""From a stored resource to its search index rows, and the parsing of search values.

Five kinds of row, one table each (``tables``):

* token: ``(param, system, code)`` — Coding, CodeableConcept, Identifier, ContactPoint, code,
  boolean; logical references (``Reference.identifier``) too, under ``<param>:identifier``;
* string: ``(param, normalised, exact)`` — normalised is case-folded without accents, for
  the default "starts with" match; exact is the value as sent, for ``:exact``;
* date: ``(param, low, high)`` — the instant range the value covers (``2024`` covers the whole
  year), ``high`` exclusive; open period ends are the far past or future;
* reference: ``(param, target type, target id)``;
* quantity: ``(param, value, system, code, unit)``.

Everything here is plain Python over dicts (the consumer never validates or builds models) and
is deterministic, so the rows of an old version can be recomputed to delete them.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal, InvalidOperation
from functools import lru_cache
from typing import Any

from record.searchparams import REGISTRY, SearchParam

# Bounds of open-ended periods (and of sorting values that are missing).
FAR_PAST = datetime(1, 1, 1, tzinfo=UTC)
FAR_FUTURE = datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC)
MAX_VALUE_LENGTH = 256  # longer values are cut: an index entry must stay under 2.7 kB

TokenRow = tuple[str, str, str]  # param, system, code
StringRow = tuple[str, str, str]  # param, normalised, exact
DateRow = tuple[str, datetime, datetime]  # param, low, high (exclusive)
ReferenceRow = tuple[str, str, str]  # param, target type, target id
QuantityRow = tuple[str, float, str, str, str]  # param, value, system, code, unit


@dataclass
class IndexRows:
    tokens: set[TokenRow] = field(default_factory=set)
    strings: set[StringRow] = field(default_factory=set)
    dates: set[DateRow] = field(default_factory=set)
    references: set[ReferenceRow] = field(default_factory=set)
    quantities: set[QuantityRow] = field(default_factory=set)

    def count(self) -> int:
        return (
            len(self.tokens)
            + len(self.strings)
            + len(self.dates)
            + len(self.references)
            + len(self.quantities)
        )


# --- walking paths -----------------------------------------------------------------------------


def values_at(resource: dict[str, Any], path: str) -> Iterator[Any]:
    """Every value at a dotted path; lists are walked into at every step."""
    nodes: list[Any] = [resource]
    for step in path.split("."):
        found: list[Any] = []
        for node in nodes:
            if isinstance(node, dict):
                value = node.get(step)
                if value is None:
                    continue
                if isinstance(value, list):
                    found.extend(v for v in value if v is not None)
                else:
                    found.append(value)
        if not found:
            return
        nodes = found
    yield from nodes


# --- strings -----------------------------------------------------------------------------------


@lru_cache(maxsize=65536)
def normalise(text: str) -> str:
    """Case-folded, accents removed, whitespace collapsed: how strings are matched."""
    decomposed = unicodedata.normalize("NFKD", text)
    stripped = "".join(c for c in decomposed if not unicodedata.combining(c))
    return " ".join(stripped.casefold().split())[:MAX_VALUE_LENGTH]


def _string_parts(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for key in ("family", "text", "city", "district", "state", "postalCode", "country"):
            part = value.get(key)
            if isinstance(part, str):
                yield part
        for key in ("given", "prefix", "suffix", "line"):
            parts = value.get(key)
            if isinstance(parts, list):
                yield from (p for p in parts if isinstance(p, str))


# --- tokens ------------------------------------------------------------------------------------


def _cut(text: str) -> str:
    return text[:MAX_VALUE_LENGTH]


def _token_values(value: Any, implicit_system: str) -> Iterator[tuple[str, str]]:
    if isinstance(value, str):
        yield implicit_system, _cut(value)
    elif isinstance(value, bool):
        yield "", "true" if value else "false"
    elif isinstance(value, dict):
        codings = value.get("coding")
        if isinstance(codings, list):  # CodeableConcept
            for coding in codings:
                if isinstance(coding, dict) and isinstance(coding.get("code"), str):
                    yield _cut(str(coding.get("system") or "")), _cut(coding["code"])
        elif isinstance(value.get("code"), str):  # Coding
            yield _cut(str(value.get("system") or "")), _cut(value["code"])
        elif "value" in value and isinstance(value["value"], str | int):  # Identifier
            yield _cut(str(value.get("system") or "")), _cut(str(value["value"]))


# --- dates -------------------------------------------------------------------------------------

_DATE = re.compile(
    r"(\d{4})(?:-(\d{2})(?:-(\d{2})(?:T(\d{2}):(\d{2})(?::(\d{2})(\.\d+)?)?"
    r"(Z|[+-]\d{2}:\d{2})?)?)?)?"
)


def _add_months(moment: datetime, months: int) -> datetime:
    total = moment.month - 1 + months
    year = moment.year + total // 12
    if year > 9999:
        return FAR_FUTURE
    return moment.replace(year=year, month=total % 12 + 1)


@lru_cache(maxsize=65536)
def date_range(text: str) -> tuple[datetime, datetime] | None:
    """The instants ``[low, high)`` a FHIR date, dateTime or instant covers, in UTC.

    ``2024`` is the whole year, ``2024-03-01`` the whole day (UTC), ``2024-03-01T10:00:00Z``
    the whole second. A time without a zone is read as UTC. None when ``text`` is not a date.
    """
    match = _DATE.fullmatch(text.strip())
    if match is None:
        return None
    year, month, day, hour, minute, second, fraction, zone = match.groups()
    try:
        if month is None:
            low = datetime(int(year), 1, 1, tzinfo=UTC)
            return low, _add_months(low, 12)
        if day is None:
            low = datetime(int(year), int(month), 1, tzinfo=UTC)
            return low, _add_months(low, 1)
        if hour is None:
            low = datetime(int(year), int(month), int(day), tzinfo=UTC)
            return low, _plus(low, timedelta(days=1))
        tz = UTC if zone in (None, "Z") else _zone(zone)
        micro = int((fraction or ".0")[1:7].ljust(6, "0"))
        local = datetime(
            int(year), int(month), int(day), int(hour), int(minute), int(second or 0), micro, tz
        )
        low = local.astimezone(UTC)
        if second is None:
            step = timedelta(minutes=1)
        elif fraction is None:
            step = timedelta(seconds=1)
        else:
            step = timedelta(microseconds=max(1, 10 ** (6 - min(len(fraction) - 1, 6))))
        return low, _plus(low, step)
    except (ValueError, OverflowError):
        return None


def _plus(moment: datetime, step: timedelta) -> datetime:
    try:
        return moment + step
    except OverflowError:
        return FAR_FUTURE


def _zone(text: str) -> timezone:
    sign = -1 if text[0] == "-" else 1
    hours, minutes = int(text[1:3]), int(text[4:6])
    return timezone(sign * timedelta(hours=hours, minutes=minutes))


def _date_values(value: Any) -> Iterator[tuple[datetime, datetime]]:
    if isinstance(value, str):
        found = date_range(value)
        if found:
            yield found
    elif isinstance(value, dict) and ("start" in value or "end" in value):  # Period
        start = date_range(value["start"]) if isinstance(value.get("start"), str) else None
        end = date_range(value["end"]) if isinstance(value.get("end"), str) else None
        if start or end:
            yield (start[0] if start else FAR_PAST), (end[1] if end else FAR_FUTURE)


# --- references --------------------------------------------------------------------------------

_REFERENCE = re.compile(
    r"(?:.*/)?([A-Z][A-Za-z]{1,63})/([A-Za-z0-9\-.]{1,64})(?:/_history/[A-Za-z0-9\-.]{1,64})?"
)


@lru_cache(maxsize=65536)
def parse_reference(text: str) -> tuple[str, str] | None:
    """``(type, id)`` of a literal reference (relative, absolute or versioned), else None."""
    if text.startswith(("#", "urn:")):
        return None
    match = _REFERENCE.fullmatch(text)
    return (match.group(1), match.group(2)) if match else None


def _reference_rows(
    param: SearchParam, value: Any, rows: IndexRows, column: str, identifier_column: str
) -> None:
    if not isinstance(value, dict):
        return
    text = value.get("reference")
    if isinstance(text, str):
        target = parse_reference(text)
        if target and (not param.targets or target[0] in param.targets):
            rows.references.add((column, target[0], target[1]))
    logical = value.get("identifier")
    if isinstance(logical, dict):
        for system, code in _token_values(logical, ""):
            rows.tokens.add((identifier_column, system, code))


# --- quantities --------------------------------------------------------------------------------


def _quantity_values(value: Any) -> Iterator[tuple[float, str, str, str]]:
    if isinstance(value, dict):
        number = value.get("value")
        if isinstance(number, int | float) and not isinstance(number, bool):
            yield (
                float(number),
                _cut(str(value.get("system") or "")),
                _cut(str(value.get("code") or "")),
                _cut(str(value.get("unit") or "")),
            )


def number_range(text: str) -> tuple[Decimal, Decimal, Decimal]:
    """A search number with its implicit precision: ``5.4`` is ``[5.35, 5.45)``.

    Raises ValueError when ``text`` is not a number.
    """
    try:
        number = Decimal(text)
    except InvalidOperation:
        raise ValueError(f"{text!r} is not a number") from None
    if not number.is_finite():
        raise ValueError(f"{text!r} is not a finite number")
    exponent = number.as_tuple().exponent
    assert isinstance(exponent, int)
    half = Decimal(5).scaleb(exponent - 1)
    return number, number - half, number + half


# --- per resource type -------------------------------------------------------------------------
#
# Each parameter becomes a handler of the values at the end of its path; the handlers of a type
# are grouped by the first step of their paths, so that indexing a resource walks the elements
# it has, not every path the type could have.

ValueHandler = Callable[[Any, IndexRows], None]


def _handler(param: SearchParam) -> ValueHandler:
    column = param.column
    tokens_of = _token_values
    if param.type == "token":
        system = param.system

        def token(value: Any, rows: IndexRows) -> None:
            if isinstance(value, str):
                rows.tokens.add((column, system, value[:MAX_VALUE_LENGTH]))
                return
            for found in tokens_of(value, system):
                rows.tokens.add((column, *found))

        return token
    if param.type == "string":

        def string(value: Any, rows: IndexRows) -> None:
            for part in _string_parts(value):
                if part.strip():
                    rows.strings.add((column, normalise(part), _cut(part)))

        return string
    if param.type == "date":

        def date(value: Any, rows: IndexRows) -> None:
            for low, high in _date_values(value):
                rows.dates.add((column, low, high))

        return date
    if param.type == "reference":
        identifier_column = f"{column}:identifier"

        def reference(value: Any, rows: IndexRows) -> None:
            _reference_rows(param, value, rows, column, identifier_column)

        return reference

    def quantity(value: Any, rows: IndexRows) -> None:
        for number, system, code, unit in _quantity_values(value):
            rows.quantities.add((column, number, system, code, unit))

    return quantity


Plan = dict[str, list[tuple[tuple[str, ...], ValueHandler]]]


def _plan(params: Iterable[SearchParam]) -> Plan:
    plan: Plan = {}
    for param in params:
        handle = _handler(param)
        for path in param.paths:
            first, *rest = path.split(".")
            plan.setdefault(first, []).append((tuple(rest), handle))
    return plan


_PLANS: dict[str, Plan] = {name: _plan(search.indexed()) for name, search in REGISTRY.items()}


def _apply(plan: Plan, resource: dict[str, Any], rows: IndexRows) -> None:
    for key, value in resource.items():
        entries = plan.get(key)
        if entries is None or value is None:
            continue
        for rest, handle in entries:
            if rest:
                for found in values_at({key: value}, ".".join((key, *rest))):
                    handle(found, rows)
            elif isinstance(value, list):
                for item in value:
                    if item is not None:
                        handle(item, rows)
            else:
                handle(value, rows)


def index_rows(resource: dict[str, Any]) -> IndexRows:
    """Every index row of ``resource`` (nothing for a type without search parameters)."""
    rows = IndexRows()
    plan = _PLANS.get(str(resource.get("resourceType")))
    if plan:
        _apply(plan, resource, rows)
    return rows


def references_of(resource: dict[str, Any], param: SearchParam) -> Iterable[tuple[str, str]]:
    """The literal ``(type, id)`` references of one reference parameter, for ``_include``."""
    stored = REGISTRY[str(resource["resourceType"])].params.get(param.column, param)
    rows = IndexRows()
    _apply(_plan([stored]), resource, rows)
    only = param.only_targets
    return sorted({(t, i) for _, t, i in rows.references if not only or t in only})
