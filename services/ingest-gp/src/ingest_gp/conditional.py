"""Conditional references, creates and updates: ``Patient?identifier=system|value``.

Only the ``identifier`` search parameter is understood (several are ANDed; a token without
``|`` matches any system, ``|value`` matches an identifier without a system), and only for the
resource types whose identifiers ingest-gp indexes (``publishing.INDEXED_TYPES``). A criteria is
matched against the bundle itself first, then against the identifier index:

* a conditional **reference** may resolve to a resource of any feed (the same feed preferred):
  it only points at it;
* a conditional **create** (``ifNoneExist``) or **update** (``PUT Patient?identifier=...``)
  looks only at the pushing feed's own resources: a feed never updates another's.

No match fails a reference (404) and creates or updates nothing special; several matches fail
the entry (412), as FHIR says.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl

from sqlalchemy.ext.asyncio import AsyncSession

from ingest_gp.publishing import INDEXED_TYPES, Match, find_by_identifier

Token = tuple[str | None, str]  # (system: None = any, "" = none; value)


class CriteriaError(ValueError):
    """A conditional URL ingest-gp cannot evaluate."""


@dataclass(frozen=True)
class Criteria:
    resource_type: str
    tokens: tuple[Token, ...]

    def __str__(self) -> str:
        return f"{self.resource_type}?" + "&".join(
            f"identifier={v if s is None else f'{s}|{v}'}" for s, v in self.tokens
        )


def is_conditional_reference(reference: str) -> bool:
    head, sep, _ = reference.partition("?")
    return bool(sep) and head.isalpha() and head[:1].isupper()


def parse(text: str, resource_type: str | None = None) -> Criteria:
    """``Patient?identifier=a|b`` (or ``identifier=a|b`` for ``resource_type``) as Criteria."""
    head, sep, query = text.partition("?")
    if sep:
        named = head.rsplit("/", 1)[-1]
        if resource_type is not None and named != resource_type:
            raise CriteriaError(f"{text!r} names {named}, not {resource_type}")
        resource_type = named
    else:
        query = head
    if not resource_type:
        raise CriteriaError(f"{text!r} does not name a resource type")
    if resource_type not in INDEXED_TYPES:
        kinds = ", ".join(sorted(INDEXED_TYPES))
        raise CriteriaError(f"conditional matching of {resource_type} is not supported ({kinds})")
    tokens: list[Token] = []
    for name, value in parse_qsl(query, keep_blank_values=True):
        if name != "identifier":
            raise CriteriaError(
                f"search parameter {name!r} is not supported here (identifier only)"
            )
        system, bar, code = value.partition("|")
        if not bar:
            system, code = "", value
            tokens.append((None, code))
        else:
            tokens.append((system, code))
        if not code:
            raise CriteriaError(f"identifier={value!r} has no value")
    if not tokens:
        raise CriteriaError(f"{text!r} has no identifier=... criteria")
    return Criteria(resource_type, tuple(tokens))


def matches(resource: Mapping[str, Any], criteria: Criteria) -> bool:
    if resource.get("resourceType") != criteria.resource_type:
        return False
    found = resource.get("identifier")
    pairs = {
        (i.get("system") or "", i.get("value"))
        for i in (found if isinstance(found, list) else [])
        if isinstance(i, dict)
    }
    for system, value in criteria.tokens:
        if system is None:
            if not any(v == value for _, v in pairs):
                return False
        elif (system, value) not in pairs:
            return False
    return True


async def lookup(session: AsyncSession, criteria: Criteria) -> list[Match]:
    """Every indexed resource meeting all of the criteria's identifiers."""
    result: dict[str, Match] | None = None
    for system, value in criteria.tokens:
        found = {
            m.ref: m
            for m in await find_by_identifier(session, criteria.resource_type, system, value)
        }
        result = found if result is None else {r: m for r, m in result.items() if r in found}
    return list((result or {}).values())


def choose(candidates: Iterable[Match], feed_id: str, *, own_feed_only: bool) -> list[Match]:
    """The candidates that count: the feed's own if it has any (only those, for updates)."""
    candidates = list(candidates)
    own = [m for m in candidates if m.feed == feed_id]
    if own or own_feed_only:
        return own
    return candidates
