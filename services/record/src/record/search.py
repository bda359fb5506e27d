"""FHIR search: from query parameters to SQL over the index tables, with keyset paging.

What is supported (and said so in the CapabilityStatement, which is built from the same tables):

* parameters of type token (``system|code``, ``code``, ``|code``, ``system|``; ``:not``),
  string ("starts with", case and accent blind; ``:exact``, ``:contains``), date (prefixes
  ``eq ne gt lt ge le sa eb``, precision-aware ranges), reference (``id``, ``Type/id``, an
  absolute URL, ``:Type``, ``:identifier`` for logical references) and quantity (prefixes as
  dates plus ``ap``, ``number|system|code`` or ``number||unit``); ``:missing`` on all of them;
* ``_id`` and ``_lastUpdated`` on every type;
* a comma means OR, a repeated parameter means AND;
* ``_count`` (``0`` counts only), ``_sort`` (``_id``, ``_lastUpdated``, date and string
  parameters, ``-`` for descending), ``_include`` and ``_revinclude`` (``Type:param[:Target]``
  of reference parameters), ``_summary=count``, ``_total=none|estimate|accurate``.

Paging is by keyset: a ``next`` link carries the sort values and id of the last entry
(``_cursor``), so a page never repeats or skips an entry because something was inserted
meanwhile. Anything else is an unknown parameter: ignored and reported in an OperationOutcome
entry (``Prefer: handling=lenient``, the default), or refused with 400
(``Prefer: handling=strict``).
"""

from __future__ import annotations

import base64
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any, Literal

import orjson
from sqlalchemy import (
    DateTime,
    Float,
    Text,
    and_,
    cast,
    func,
    literal,
    not_,
    or_,
    select,
    true,
)
from sqlalchemy.sql.elements import ColumnElement

from fhir_common.errors import FhirError, Issue
from record.indexing import FAR_FUTURE, FAR_PAST, date_range, normalise, number_range
from record.searchparams import SearchParam, param
from record.tables import (
    resources,
    search_date,
    search_quantity,
    search_reference,
    search_string,
    search_token,
)

Handling = Literal["strict", "lenient"]
PREFIXES = ("eq", "ne", "gt", "lt", "ge", "le", "sa", "eb")
QUANTITY_PREFIXES = (*PREFIXES, "ap")
MODIFIERS: dict[str, tuple[str, ...]] = {
    "token": ("missing", "not"),
    "string": ("missing", "exact", "contains"),
    "date": ("missing",),
    "reference": ("missing", "identifier"),  # and :Type
    "quantity": ("missing",),
}
# Result parameters we act on, and ones that change nothing here.
RESULT_PARAMS = ("_count", "_sort", "_include", "_revinclude", "_summary", "_total", "_cursor")
HARMLESS_PARAMS = ("_format", "_pretty")
JSON_FORMATS = ("json", "application/json", "application/fhir+json", "application/json+fhir")
MAX_STRING = "\U0010ffff"


def bad_request(diagnostics: str, expression: str | None = None) -> FhirError:
    return FhirError.single(400, "invalid", diagnostics, [expression] if expression else [])


def split_values(value: str) -> list[str]:
    """Split on commas not escaped with ``\\``; unescaping is left to the parts' readers."""
    parts: list[str] = []
    current: list[str] = []
    chars = iter(value)
    for char in chars:
        if char == "\\":
            following = next(chars, "")
            current.append("\\" + following)
        elif char == ",":
            parts.append("".join(current))
            current = []
        else:
            current.append(char)
    parts.append("".join(current))
    return parts


def _split_pipe(value: str) -> list[str]:
    """Split on unescaped ``|`` and unescape the parts."""
    parts = re.split(r"(?<!\\)\|", value)
    return [_unescape(p) for p in parts]


def _unescape(value: str) -> str:
    return re.sub(r"\\([,|$\\])", r"\1", value)


# --- the parsed search ---------------------------------------------------------------------------


@dataclass(frozen=True)
class SortKey:
    name: str
    descending: bool
    expression: ColumnElement[Any]
    kind: Literal["date", "string", "id"]


@dataclass(frozen=True)
class Include:
    source_type: str
    param: SearchParam
    target_type: str | None  # Type:param:Target

    def text(self) -> str:
        suffix = f":{self.target_type}" if self.target_type else ""
        return f"{self.source_type}:{self.param.name}{suffix}"


@dataclass
class Search:
    resource_type: str
    conditions: list[ColumnElement[bool]] = field(default_factory=list)
    count: int = 100
    sort: list[SortKey] = field(default_factory=list)
    includes: list[Include] = field(default_factory=list)
    revincludes: list[Include] = field(default_factory=list)
    summary_count: bool = False
    total: Literal["none", "estimate", "accurate"] = "estimate"
    cursor: list[Any] | None = None  # sort values..., id, entries before this page
    used: list[tuple[str, str]] = field(default_factory=list)  # for the self link
    ignored: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Limits:
    default_count: int
    max_count: int


def parse_search(
    resource_type: str,
    items: Sequence[tuple[str, str]],
    *,
    handling: Handling,
    limits: Limits,
) -> Search:
    """Turn query parameters into a ``Search``; 400 for malformed values, and for unknown
    parameters when ``handling`` is strict."""
    search = Search(resource_type, count=limits.default_count)
    unknown: list[str] = []
    for name, value in items:
        if name in RESULT_PARAMS:
            _result_param(search, name, value, unknown, limits)
            continue
        if name in HARMLESS_PARAMS:
            if name == "_format" and value not in JSON_FORMATS:
                raise FhirError.single(406, "not-supported", "only JSON is supported")
            continue
        base, _, modifier = name.partition(":")
        definition = param(resource_type, base)
        if definition is None or not _modifier_allowed(definition, modifier):
            unknown.append(name)
            continue
        if value == "":
            raise bad_request(f"parameter {name} has no value", name)
        search.conditions.append(_condition(resource_type, definition, modifier, value, name))
        search.used.append((name, value))
    if unknown:
        if handling == "strict":
            raise FhirError(
                400,
                [
                    Issue(
                        code="not-supported",
                        diagnostics=f"unknown or unsupported search parameter {n} on "
                        f"{resource_type} (Prefer: handling=strict)",
                        expression=[n],
                    )
                    for n in unknown
                ],
            )
        search.ignored = unknown
    return search


def _modifier_allowed(definition: SearchParam, modifier: str) -> bool:
    if not modifier:
        return True
    if definition.name == "_id":
        return modifier in ("missing", "not")
    if definition.type == "reference" and modifier[:1].isupper():
        return not definition.targets or modifier in definition.targets
    return modifier in MODIFIERS[definition.type]


def _result_param(
    search: Search, name: str, value: str, unknown: list[str], limits: Limits
) -> None:
    if name == "_count":
        if not value.isdigit():
            raise bad_request(f"_count must be a whole number, not {value!r}", "_count")
        count = int(value)
        if count == 0:
            search.summary_count = True
        search.count = max(1, min(count, limits.max_count))
        search.used.append((name, str(count)))
    elif name == "_summary":
        if value == "count":
            search.summary_count = True
            search.used.append((name, value))
        elif value != "false":
            unknown.append(f"_summary={value}")
    elif name == "_total":
        if value not in ("none", "estimate", "accurate"):
            raise bad_request("_total must be none, estimate or accurate", "_total")
        search.total = value  # type: ignore[assignment]
        search.used.append((name, value))
    elif name == "_sort":
        for key in split_values(value):
            sort = sort_key(search.resource_type, key)
            if sort is None:
                unknown.append(f"_sort={key}")
            else:
                search.sort.append(sort)
        if search.sort:
            text = ",".join(("-" if s.descending else "") + s.name for s in search.sort)
            search.used.append((name, text))
    elif name in ("_include", "_revinclude"):
        include = _include(search.resource_type, value, reverse=name == "_revinclude")
        if include is None:
            unknown.append(f"{name}={value}")
        else:
            (search.revincludes if name == "_revinclude" else search.includes).append(include)
            search.used.append((name, value))
    elif name == "_cursor":
        search.cursor = decode_cursor(value)


def _include(resource_type: str, value: str, *, reverse: bool) -> Include | None:
    parts = value.split(":")
    if len(parts) not in (2, 3):
        return None
    source, name = parts[0], parts[1]
    target = parts[2] if len(parts) == 3 else None
    if not reverse and source != resource_type:
        return None
    definition = param(source, name)
    if definition is None or definition.type != "reference" or definition.name.startswith("_"):
        return None
    if target and definition.targets and target not in definition.targets:
        return None
    if reverse and definition.targets and resource_type not in definition.targets:
        return None
    if reverse and target and target != resource_type:
        return None
    return Include(source, definition, target)


# --- cursors -------------------------------------------------------------------------------------


def encode_cursor(values: Sequence[Any]) -> str:
    plain = [v.isoformat() if isinstance(v, datetime) else v for v in values]
    return base64.urlsafe_b64encode(orjson.dumps(plain)).decode().rstrip("=")


def decode_cursor(text: str) -> list[Any]:
    try:
        padded = text + "=" * (-len(text) % 4)
        values = orjson.loads(base64.urlsafe_b64decode(padded.encode()))
    except (ValueError, orjson.JSONDecodeError):
        raise bad_request("_cursor is not one of ours", "_cursor") from None
    if not isinstance(values, list) or len(values) < 2:
        raise bad_request("_cursor is not one of ours", "_cursor")
    return values


# --- sorting -------------------------------------------------------------------------------------


def sort_key(resource_type: str, text: str) -> SortKey | None:
    descending = text.startswith("-")
    name = text.removeprefix("-")
    if name == "_id":
        return SortKey(name, descending, resources.c.id, "id")
    if name == "_lastUpdated":
        return SortKey(name, descending, resources.c.last_updated, "date")
    definition = param(resource_type, name)
    if definition is None or definition.type not in ("date", "string"):
        return None
    if definition.type == "date":
        column = search_date.c.low
        aggregate = func.max(column) if descending else func.min(column)
        missing: Any = FAR_PAST if descending else FAR_FUTURE
        table = search_date
        kind: Literal["date", "string"] = "date"
        value_type: Any = DateTime(timezone=True)
    else:
        column = search_string.c.value
        aggregate = func.max(column) if descending else func.min(column)
        missing = "" if descending else MAX_STRING
        table = search_string
        kind = "string"
        value_type = Text()
    subquery = (
        select(aggregate)
        .where(
            table.c.resource_type == resource_type,
            table.c.id == resources.c.id,
            table.c.param == definition.column,
        )
        .scalar_subquery()
    )
    expression = func.coalesce(subquery, literal(missing, value_type), type_=value_type)
    return SortKey(name, descending, expression, kind)


def cursor_value(key: SortKey, value: Any) -> Any:
    if key.kind == "date" and isinstance(value, str):
        return datetime.fromisoformat(value)
    return value


# --- conditions ----------------------------------------------------------------------------------


def _condition(
    resource_type: str, definition: SearchParam, modifier: str, value: str, name: str
) -> ColumnElement[bool]:
    if modifier == "missing":
        if value not in ("true", "false"):
            raise bad_request(f"{name} must be true or false", name)
        present = _present(resource_type, definition)
        return not_(present) if value == "true" else present
    values = split_values(value)
    if definition.name == "_id":
        ids = [_unescape(v) for v in values]
        condition: ColumnElement[bool] = resources.c.id.in_(ids)
        return not_(condition) if modifier == "not" else condition
    if definition.name == "_lastUpdated":
        return or_(*(_last_updated(v, name) for v in values))
    builder = _BUILDERS[definition.type]
    return builder(resource_type, definition, modifier, values, name)


def _exists(table: Any, resource_type: str, column: str, *where: Any) -> ColumnElement[bool]:
    return (
        select(literal(1))
        .where(
            table.c.resource_type == resource_type,
            table.c.param == column,
            table.c.id == resources.c.id,
            *where,
        )
        .exists()
    )


_TABLES = {
    "token": search_token,
    "string": search_string,
    "date": search_date,
    "reference": search_reference,
    "quantity": search_quantity,
}


def _present(resource_type: str, definition: SearchParam) -> ColumnElement[bool]:
    if definition.name in ("_id", "_lastUpdated"):
        return true()
    table = _TABLES[definition.type]
    where = []
    if definition.only_targets:
        where.append(table.c.target_type.in_(definition.only_targets))
    present = _exists(table, resource_type, definition.column, *where)
    if definition.type == "reference":  # a logical reference is there too
        present = or_(
            present, _exists(search_token, resource_type, f"{definition.column}:identifier")
        )
    return present


def _token_match(table: Any, value: str, name: str) -> ColumnElement[bool]:
    parts = _split_pipe(value)
    if len(parts) == 1:
        return table.c.code == parts[0]
    if len(parts) != 2:
        raise bad_request(f"{name}: a token is system|code, code or |code", name)
    system, code = parts
    if not code:
        if not system:
            raise bad_request(f"{name}: a token needs a system or a code", name)
        return table.c.system == system
    return and_(table.c.system == system, table.c.code == code)


def _token(
    resource_type: str, definition: SearchParam, modifier: str, values: list[str], name: str
) -> ColumnElement[bool]:
    matches = or_(*(_token_match(search_token, v, name) for v in values))
    found = _exists(search_token, resource_type, definition.column, matches)
    return not_(found) if modifier == "not" else found


def _string(
    resource_type: str, definition: SearchParam, modifier: str, values: list[str], name: str
) -> ColumnElement[bool]:
    table = search_string
    matches: list[ColumnElement[bool]] = []
    for raw in values:
        text = _unescape(raw)
        if modifier == "exact":
            matches.append(table.c.exact == text)
            continue
        wanted = normalise(text)
        if not wanted:
            raise bad_request(f"{name} needs a value", name)
        if modifier == "contains":
            escaped = wanted.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
            matches.append(table.c.value.like(f"%{escaped}%", escape="\\"))
        else:
            matches.append(and_(table.c.value >= wanted, table.c.value < wanted + MAX_STRING))
    return _exists(table, resource_type, definition.column, or_(*matches))


def _prefixed(value: str, allowed: Sequence[str], name: str) -> tuple[str, str]:
    if len(value) > 2 and value[:2] in QUANTITY_PREFIXES:
        prefix = value[:2]
        if prefix not in allowed:
            raise bad_request(f"{name}: the prefix {prefix!r} is not supported here", name)
        return prefix, value[2:]
    return "eq", value


def parse_date(text: str, name: str) -> tuple[datetime, datetime]:
    found = date_range(text)
    if found is None:
        raise bad_request(f"{name}: {text!r} is not a FHIR date or dateTime", name)
    return found


def range_condition(
    prefix: str, low: Any, high: Any, wanted: tuple[datetime, datetime]
) -> ColumnElement[bool]:
    """FHIR date comparison of the value range ``[low, high)`` with the parameter range."""
    plow, phigh = wanted
    conditions: dict[str, Callable[[], ColumnElement[bool]]] = {
        "eq": lambda: and_(low >= plow, high <= phigh),
        "ne": lambda: not_(and_(low >= plow, high <= phigh)),
        "gt": lambda: high > phigh,
        "lt": lambda: low < plow,
        "ge": lambda: high > plow,
        "le": lambda: low < phigh,
        "sa": lambda: low >= phigh,
        "eb": lambda: high <= plow,
    }
    return conditions[prefix]()


def _date(
    resource_type: str, definition: SearchParam, modifier: str, values: list[str], name: str
) -> ColumnElement[bool]:
    matches = []
    for value in values:
        prefix, text = _prefixed(value, PREFIXES, name)
        wanted = parse_date(text, name)
        matches.append(range_condition(prefix, search_date.c.low, search_date.c.high, wanted))
    return _exists(search_date, resource_type, definition.column, or_(*matches))


def _last_updated(value: str, name: str) -> ColumnElement[bool]:
    prefix, text = _prefixed(value, PREFIXES, name)
    plow, phigh = parse_date(text, name)
    moment = resources.c.last_updated  # an instant: the range [moment, moment + 1 µs)
    conditions = {
        "eq": and_(moment >= plow, moment < phigh),
        "ne": not_(and_(moment >= plow, moment < phigh)),
        "gt": moment >= phigh,
        "lt": moment < plow,
        "ge": moment >= plow,
        "le": moment < phigh,
        "sa": moment >= phigh,
        "eb": moment < plow,
    }
    return conditions[prefix]


def _reference(
    resource_type: str, definition: SearchParam, modifier: str, values: list[str], name: str
) -> ColumnElement[bool]:
    if modifier == "identifier":
        column = f"{definition.column}:identifier"
        matches = or_(*(_token_match(search_token, v, name) for v in values))
        return _exists(search_token, resource_type, column, matches)
    table = search_reference
    conditions = []
    for raw in values:
        text = _unescape(raw)
        target_type, target_id = _reference_value(text, modifier, name)
        where = [table.c.target_id == target_id]
        if target_type:
            if definition.targets and target_type not in definition.targets:
                raise bad_request(f"{name} cannot refer to a {target_type}", name)
            where.append(table.c.target_type == target_type)
        elif definition.only_targets:
            where.append(table.c.target_type.in_(definition.only_targets))
        conditions.append(and_(*where))
    return _exists(table, resource_type, definition.column, or_(*conditions))


_REFERENCE_VALUE = re.compile(
    r"(?:.*/)?([A-Z][A-Za-z]{1,63})/([A-Za-z0-9\-.]{1,64})(?:/_history/[A-Za-z0-9\-.]{1,64})?"
)
_ID = re.compile(r"[A-Za-z0-9\-.]{1,64}")


def _reference_value(text: str, modifier: str, name: str) -> tuple[str | None, str]:
    if _ID.fullmatch(text):
        return (modifier or None), text
    match = _REFERENCE_VALUE.fullmatch(text)
    if match is None:
        raise bad_request(f"{name}: {text!r} is not a reference (id, Type/id or URL)", name)
    if modifier and modifier != match.group(1):
        raise bad_request(f"{name}: {text!r} is not a {modifier}", name)
    return match.group(1), match.group(2)


def _quantity(
    resource_type: str, definition: SearchParam, modifier: str, values: list[str], name: str
) -> ColumnElement[bool]:
    table = search_quantity
    matches = []
    for raw in values:
        parts = _split_pipe(raw)
        if len(parts) not in (1, 3):
            raise bad_request(f"{name}: a quantity is [prefix]number[|system|code]", name)
        prefix, number_text = _prefixed(parts[0], QUANTITY_PREFIXES, name)
        try:
            number, low, high = number_range(number_text)
        except ValueError as error:
            raise bad_request(f"{name}: {error}", name) from None
        compare = _number_condition(prefix, table.c.value, number, low, high)
        if len(parts) == 3:
            system, code = parts[1], parts[2]
            if system:
                compare = and_(compare, table.c.system == system, table.c.code == code)
            elif code:
                compare = and_(compare, or_(table.c.code == code, table.c.unit == code))
        matches.append(compare)
    return _exists(table, resource_type, definition.column, or_(*matches))


def _number_condition(
    prefix: str, value: Any, number: Decimal, low: Decimal, high: Decimal
) -> ColumnElement[bool]:
    n, lo, hi = (literal(float(x), Float()) for x in (number, low, high))
    tenth = abs(number) / 10
    conditions: dict[str, Callable[[], ColumnElement[bool]]] = {
        "eq": lambda: and_(value >= lo, value < hi),
        "ne": lambda: not_(and_(value >= lo, value < hi)),
        "gt": lambda: value > n,
        "lt": lambda: value < n,
        "ge": lambda: value >= n,
        "le": lambda: value <= n,
        "sa": lambda: value > n,
        "eb": lambda: value < n,
        "ap": lambda: and_(value >= float(number - tenth), value <= float(number + tenth)),
    }
    return conditions[prefix]()


_BUILDERS: dict[str, Callable[[str, SearchParam, str, list[str], str], ColumnElement[bool]]] = {
    "token": _token,
    "string": _string,
    "date": _date,
    "reference": _reference,
    "quantity": _quantity,
}


# --- the queries ---------------------------------------------------------------------------------


def page_query(search: Search) -> Any:
    """The next page: ids, sort values and the resources themselves (JSON as text), one more
    than the page to tell whether it is the last."""
    keys = search.sort
    columns = [k.expression.label(f"s{n}") for n, k in enumerate(keys)]
    inner = (
        select(resources.c.id.label("id"), *columns)
        .where(resources.c.resource_type == search.resource_type, *search.conditions)
        .subquery()
    )
    sort_columns = [inner.c[f"s{n}"] for n in range(len(keys))]
    query = select(inner)
    if search.cursor is not None:
        query = query.where(_after(keys, sort_columns, inner.c.id, search.cursor))
    ordering = [
        c.desc() if k.descending else c.asc() for k, c in zip(keys, sort_columns, strict=True)
    ]
    page = query.order_by(*ordering, inner.c.id).limit(search.count + 1).subquery("page")
    page_sort = [page.c[f"s{n}"] for n in range(len(keys))]
    return (
        select(
            page,
            resources.c.version_id,
            resources.c.last_updated,
            resources.c.patient_key,
            resources.c.source,
            cast(resources.c.content, Text).label("raw"),
            resources.c.setting,
        )
        .join(
            resources,
            and_(resources.c.resource_type == search.resource_type, resources.c.id == page.c.id),
        )
        .order_by(
            *(c.desc() if k.descending else c.asc() for k, c in zip(keys, page_sort, strict=True)),
            page.c.id,
        )
    )


def _after(
    keys: Sequence[SortKey], columns: Sequence[Any], id_column: Any, cursor: list[Any]
) -> ColumnElement[bool]:
    if len(cursor) != len(keys) + 2:
        raise bad_request("_cursor does not belong to this search", "_cursor")
    values = [cursor_value(k, v) for k, v in zip(keys, cursor, strict=False)]
    last_id = cursor[len(keys)]
    alternatives = []
    for n, (key, column) in enumerate(zip(keys, columns, strict=True)):
        equal = [c == v for c, v in zip(columns[:n], values[:n], strict=True)]
        beyond = column < values[n] if key.descending else column > values[n]
        alternatives.append(and_(*equal, beyond))
    equal_all = [c == v for c, v in zip(columns, values, strict=True)]
    alternatives.append(and_(*equal_all, id_column > last_id))
    return or_(*alternatives)


def count_query(search: Search) -> Any:
    return (
        select(func.count())
        .select_from(resources)
        .where(resources.c.resource_type == search.resource_type, *search.conditions)
    )


def revinclude_query(include: Include, target_type: str, ids: Sequence[str], limit: int) -> Any:
    from record.repository import stored_select

    sources = select(search_reference.c.id).where(
        search_reference.c.resource_type == include.source_type,
        search_reference.c.param == include.param.column,
        search_reference.c.target_type == target_type,
        search_reference.c.target_id.in_(list(ids)),
    )
    return (
        stored_select()
        .where(resources.c.resource_type == include.source_type, resources.c.id.in_(sources))
        .order_by(resources.c.id)
        .limit(limit + 1)
    )
