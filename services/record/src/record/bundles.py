"""FHIR Bundles the record returns (searchset, history), assembled as bytes.

Stored resources are spliced in as the JSON text the database returns, so that a page of a
thousand resources is not parsed and serialised again on its way out.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

import orjson
from fastapi.responses import Response

from fhir_common.errors import FHIR_JSON, Issue, operation_outcome

Mode = Literal["match", "include", "outcome"]


@dataclass(frozen=True)
class Entry:
    full_url: str | None
    raw: str | bytes  # the resource, JSON
    mode: Mode | None = "match"
    request: dict[str, Any] | None = None  # history entries
    response: dict[str, Any] | None = None


def http_date(moment: datetime) -> str:
    return moment.strftime("%a, %d %b %Y %H:%M:%S GMT")


def instant(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


def outcome_entry(issues: Sequence[Issue]) -> Entry:
    return Entry(None, orjson.dumps(operation_outcome(issues)), "outcome")


def bundle(
    kind: Literal["searchset", "history"],
    entries: Sequence[Entry],
    *,
    links: Sequence[tuple[str, str]],
    total: int | None = None,
) -> bytes:
    head: dict[str, Any] = {"resourceType": "Bundle", "type": kind}
    if total is not None:
        head["total"] = total
    head["link"] = [{"relation": relation, "url": url} for relation, url in links]
    start = orjson.dumps(head)
    if not entries:
        return start
    parts = [_entry(e) for e in entries]
    return start[:-1] + b',"entry":[' + b",".join(parts) + b"]}"


_MATCH_TAIL = b',"search":{"mode":"match"}}'


def _entry(entry: Entry) -> bytes:
    raw = entry.raw.encode() if isinstance(entry.raw, str) else entry.raw
    if entry.mode == "match" and entry.full_url and not entry.request and not entry.response:
        return b'{"fullUrl":' + orjson.dumps(entry.full_url) + b',"resource":' + raw + _MATCH_TAIL
    head = b'{"fullUrl":' + orjson.dumps(entry.full_url) + b"," if entry.full_url else b"{"
    tail: dict[str, Any] = {}
    if entry.mode:
        tail["search"] = {"mode": entry.mode}
    if entry.request:
        tail["request"] = entry.request
    if entry.response:
        tail["response"] = entry.response
    rest = b"," + orjson.dumps(tail)[1:] if tail else b"}"
    return head + b'"resource":' + raw + rest


def fhir_bytes(
    content: bytes, status: int = 200, headers: dict[str, str] | None = None
) -> Response:
    return Response(content=content, status_code=status, media_type=FHIR_JSON, headers=headers)
