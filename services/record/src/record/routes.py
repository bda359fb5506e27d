"""The record's HTTP API: FHIR REST under ``/fhir`` and the clinician's summary.

Thin: each route checks the token's scopes, asks ``repository`` / ``search`` / ``summary``,
and shapes the answer. Every error is an OperationOutcome (``FhirError``).
"""

from __future__ import annotations

import weakref
from collections.abc import Sequence
from datetime import datetime
from typing import Annotated, Any
from urllib.parse import parse_qsl, urlencode

import orjson
from fastapi import APIRouter, Depends, Path, Request
from fastapi.responses import Response
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from fhir_common.auth import Principal, get_principal
from fhir_common.errors import FhirError, Issue
from fhir_common.service import ServiceContext, context
from record import persons, repository, summary
from record.bundles import Entry, bundle, fhir_bytes, http_date, instant, outcome_entry
from record.capability import capability_statement
from record.indexing import references_of
from record.search import (
    Handling,
    Limits,
    Search,
    bad_request,
    count_query,
    decode_cursor,
    encode_cursor,
    page_query,
    parse_date,
    parse_search,
    revinclude_query,
)
from record.searchparams import supported_types
from record.settings import RecordSettings

router = APIRouter()
fhir = APIRouter(prefix="/fhir", tags=["FHIR"])

ResourceType = Annotated[str, Path(pattern=r"^[A-Z][A-Za-z]{1,63}$")]
ResourceId = Annotated[str, Path(pattern=r"^[A-Za-z0-9\-.]{1,64}$")]
Ctx = Annotated[ServiceContext, Depends(context)]
Caller = Annotated[Principal, Depends(get_principal)]
SUPPORTED = frozenset(supported_types())
JSON_FORMATS = ("json", "application/json", "application/fhir+json")


# --- helpers -------------------------------------------------------------------------------------


def _settings(ctx: ServiceContext) -> RecordSettings:
    settings = ctx.settings
    assert isinstance(settings, RecordSettings)
    return settings


_READERS: weakref.WeakKeyDictionary[Any, async_sessionmaker[AsyncSession]] = (
    weakref.WeakKeyDictionary()
)


def _database(ctx: ServiceContext) -> async_sessionmaker[AsyncSession]:
    """Sessions for reading: autocommit, so a request spends no round trips on BEGIN and
    ROLLBACK (every read is one statement, or a few that need no common snapshot)."""
    assert ctx.db is not None
    engine = ctx.db.engine
    found = _READERS.get(engine)
    if found is None:
        reading = engine.execution_options(isolation_level="AUTOCOMMIT")
        found = _READERS[engine] = async_sessionmaker(reading, expire_on_commit=False)
    return found


def base_url(request: Request) -> str:
    return str(request.url_for("capabilities")).removesuffix("/metadata")


def may(principal: Principal, resource_type: str, permission: str) -> bool:
    """What a token allows. ``patient/`` scopes are not narrowed to the launch patient's
    compartment yet, so they grant nothing here (fail closed) rather than everyone's data."""
    return any(
        s.grants(resource_type, permission) and s.context != "patient" for s in principal.scopes
    )


def require(principal: Principal, resource_type: str, permission: str) -> None:
    if not may(principal, resource_type, permission):
        raise FhirError.single(
            403,
            "forbidden",
            f"token lacks scope {resource_type}.{permission} (needs e.g. "
            f"user/{resource_type}.{permission} or system/{resource_type}.{permission}; "
            "patient/ scopes are not supported)",
        )


def supported(resource_type: str) -> None:
    if resource_type not in SUPPORTED:
        raise FhirError.single(
            404,
            "not-supported",
            f"resource type {resource_type} is not supported by this server (see /metadata)",
        )


def handling(request: Request) -> Handling:
    prefer = request.headers.get("prefer", "")
    for part in prefer.replace(";", ",").split(","):
        name, _, value = part.strip().partition("=")
        if name.strip().lower() == "handling" and value.strip().strip('"').lower() == "strict":
            return "strict"
    return "lenient"


def link(request: Request, path: str, items: Sequence[tuple[str, str]]) -> str:
    query = urlencode(list(items))
    return f"{base_url(request)}/{path}" + (f"?{query}" if query else "")


def ignored_outcome(ignored: Sequence[str]) -> Entry:
    return outcome_entry(
        [
            Issue(
                code="not-supported",
                severity="warning",
                diagnostics=f"parameter {name} is not supported and was ignored",
                expression=[name],
            )
            for name in ignored
        ]
    )


def check_params(
    request: Request, items: Sequence[tuple[str, str]], allowed: Sequence[str]
) -> list[str]:
    """Names outside ``allowed``: refused when strict, returned (to report) when lenient."""
    unknown = [name for name, _ in items if name not in allowed and name != "_format"]
    for name, value in items:
        if name == "_format" and value not in JSON_FORMATS:
            raise FhirError.single(406, "not-supported", "only JSON is supported")
    if unknown and handling(request) == "strict":
        raise FhirError(
            400,
            [
                Issue(
                    code="not-supported",
                    diagnostics=f"unknown or unsupported parameter {n} (Prefer: handling=strict)",
                    expression=[n],
                )
                for n in unknown
            ],
        )
    return unknown


def _count(value: str | None, default: int, most: int) -> int:
    if value is None:
        return default
    if not value.isdigit():
        raise bad_request(f"_count must be a whole number, not {value!r}", "_count")
    return max(1, min(int(value), most))


def _since(value: str | None) -> datetime | None:
    return parse_date(value, "_since")[0] if value else None


def _one(items: Sequence[tuple[str, str]], name: str) -> str | None:
    values = [v for n, v in items if n == name]
    if len(values) > 1:
        raise bad_request(f"{name} may be given once", name)
    return values[0] if values else None


def _etag_matches(request: Request, version: int) -> bool:
    wanted = request.headers.get("if-none-match")
    if not wanted:
        return False
    tags = {t.strip().removeprefix("W/").strip('"') for t in wanted.split(",")}
    return str(version) in tags or "*" in tags


# --- capabilities --------------------------------------------------------------------------------


@fhir.get("/metadata", name="capabilities", summary="CapabilityStatement")
async def capabilities(request: Request) -> Response:
    return fhir_bytes(orjson.dumps(capability_statement(request.app.version)))


# --- $everything ---------------------------------------------------------------------------------


@fhir.get("/Patient/{id}/$everything", summary="Everything about one person, from every feed")
async def patient_everything(
    request: Request, ctx: Ctx, id: ResourceId, principal: Caller
) -> Response:
    require(principal, "Patient", "r")
    settings = _settings(ctx)
    items = list(request.query_params.multi_items())
    ignored = check_params(request, items, ("_since", "_type", "_count", "_cursor"))
    count = _count(
        _one(items, "_count"),
        settings.record_everything_count,
        settings.record_everything_max_count,
    )
    since = _since(_one(items, "_since"))
    wanted = _everything_types(_one(items, "_type"))
    readable = sorted(t for t in wanted if may(principal, t, "r"))
    cursor_text = _one(items, "_cursor")
    after = _everything_cursor(cursor_text) if cursor_text else None
    async with _database(ctx)() as session:
        person = await persons.person_of_patient(session, id)
        if person is None:
            raise FhirError.single(404, "not-found", f"Patient/{id} is not in the record")
        found: list[repository.StoredResource] = []
        if after is None and "Patient" in readable:
            patients = (
                await repository.patients_of(session, person.keys)
                if person.keys
                else await repository.read_many(session, [("Patient", id)])
            )
            patients = [p for p in patients if since is None or p.last_updated >= since]
            patients.sort(key=lambda p: (p.id != id, p.id))
            found.extend(patients)
        others = [t for t in readable if t != "Patient"]
        more = False
        if others and person.keys:
            room = max(count - len(found), 0)
            rest = await repository.for_patient(
                session, person.keys, types=others, since=since, after=after, limit=room + 1
            )
            more = len(rest) > room
            found.extend(rest[:room])
    base = base_url(request)
    entries = [Entry(f"{base}/{r.resource_type}/{r.id}", r.raw) for r in found]
    used = [(n, v) for n, v in items if n in ("_since", "_type", "_count")]
    links = [("self", link(request, f"Patient/{id}/$everything", used))]
    if more:
        last = found[-1]
        # a first page of Patients only: the next one starts at the first of the rest
        position = ["", ""] if last.resource_type == "Patient" else [last.resource_type, last.id]
        next_cursor = encode_cursor(position)
        links.append(
            ("next", link(request, f"Patient/{id}/$everything", [*used, ("_cursor", next_cursor)]))
        )
    total = len(found) if after is None and not more else None
    notes: list[Issue] = []
    if person.nhs_number is None and after is None:
        notes.append(
            Issue(
                code="informational",
                severity="information",
                diagnostics=f"Patient/{id} has no NHS number: this is one provider's record, "
                "not joined with other providers' records about the same person",
            )
        )
    if ignored:
        entries.append(ignored_outcome(ignored))
    if notes:
        entries.append(outcome_entry(notes))
    return fhir_bytes(bundle("searchset", entries, links=links, total=total))


def _everything_types(text: str | None) -> list[str]:
    if not text:
        return sorted(SUPPORTED)
    types = [t.strip() for t in text.split(",") if t.strip()]
    unknown = [t for t in types if t not in SUPPORTED]
    if unknown:
        raise bad_request(f"_type: not supported here: {', '.join(unknown)}", "_type")
    return types


def _everything_cursor(text: str) -> tuple[str, str]:
    values = decode_cursor(text)
    if len(values) != 2 or not all(isinstance(v, str) for v in values):
        raise bad_request("_cursor does not belong to this operation", "_cursor")
    return values[0], values[1]


# --- history -------------------------------------------------------------------------------------


def _history_entry(base: str, version: repository.Version) -> Entry:
    path = f"{version.resource_type}/{version.id}"
    created = version.version_id == 1
    return Entry(
        f"{base}/{path}",
        version.raw,
        None,
        request={"method": "POST" if created else "PUT", "url": path},
        response={
            "status": "201 Created" if created else "200 OK",
            "etag": f'W/"{version.version_id}"',
            "lastModified": instant(version.last_updated),
        },
    )


@fhir.get("/{resource_type}/_history", summary="Every version of every resource of a type")
async def type_history(
    request: Request, ctx: Ctx, resource_type: ResourceType, principal: Caller
) -> Response:
    supported(resource_type)
    require(principal, resource_type, "s")
    settings = _settings(ctx)
    items = list(request.query_params.multi_items())
    ignored = check_params(request, items, ("_count", "_since", "_cursor"))
    count = _count(_one(items, "_count"), settings.record_default_count, settings.record_max_count)
    since = _since(_one(items, "_since"))
    cursor_text = _one(items, "_cursor")
    after = None
    if cursor_text:
        values = decode_cursor(cursor_text)
        if len(values) != 3:
            raise bad_request("_cursor does not belong to this history", "_cursor")
        after = (datetime.fromisoformat(values[0]), str(values[1]), int(values[2]))
    async with _database(ctx)() as session:
        versions = await repository.type_history(
            session, resource_type, since=since, after=after, limit=count
        )
    return _history_bundle(request, resource_type, versions, count, items, ignored, by_type=True)


@fhir.get("/{resource_type}/{id}/_history", summary="Every version of a resource")
async def instance_history(
    request: Request, ctx: Ctx, resource_type: ResourceType, id: ResourceId, principal: Caller
) -> Response:
    supported(resource_type)
    require(principal, resource_type, "r")
    settings = _settings(ctx)
    items = list(request.query_params.multi_items())
    ignored = check_params(request, items, ("_count", "_since", "_cursor"))
    count = _count(_one(items, "_count"), settings.record_default_count, settings.record_max_count)
    since = _since(_one(items, "_since"))
    cursor_text = _one(items, "_cursor")
    before = None
    if cursor_text:
        values = decode_cursor(cursor_text)
        if len(values) != 2 or not isinstance(values[0], int):
            raise bad_request("_cursor does not belong to this history", "_cursor")
        before = values[0]
    async with _database(ctx)() as session:
        if await repository.read(session, resource_type, id) is None:
            raise FhirError.single(404, "not-found", f"{resource_type}/{id} is not in the record")
        versions = await repository.instance_history(
            session, resource_type, id, since=since, before_version=before, limit=count
        )
    path = f"{resource_type}/{id}"
    return _history_bundle(request, path, versions, count, items, ignored, by_type=False)


def _history_bundle(
    request: Request,
    path: str,
    versions: list[repository.Version],
    count: int,
    items: Sequence[tuple[str, str]],
    ignored: Sequence[str],
    *,
    by_type: bool,
) -> Response:
    base = base_url(request)
    more = len(versions) > count
    page = versions[:count]
    used = [(n, v) for n, v in items if n in ("_count", "_since")]
    links = [("self", link(request, f"{path}/_history", used))]
    if more:
        last = page[-1]
        cursor = (
            [instant(last.last_updated), last.id, last.version_id]
            if by_type
            else [last.version_id, last.id]
        )
        links.append(
            ("next", link(request, f"{path}/_history", [*used, ("_cursor", encode_cursor(cursor))]))
        )
    entries = [_history_entry(base, v) for v in page]
    if ignored:
        entries.append(ignored_outcome(ignored))
    first_page = not any(n == "_cursor" for n, _ in items)
    total = len(page) if first_page and not more else None
    return fhir_bytes(bundle("history", entries, links=links, total=total))


@fhir.get("/{resource_type}/{id}/_history/{version}", summary="Read one version (vread)")
async def vread(
    request: Request,
    ctx: Ctx,
    resource_type: ResourceType,
    id: ResourceId,
    version: str,
    principal: Caller,
) -> Response:
    supported(resource_type)
    require(principal, resource_type, "r")
    if not version.isdigit():
        raise FhirError.single(404, "not-found", f"{resource_type}/{id} has no version {version}")
    async with _database(ctx)() as session:
        found = await repository.vread(session, resource_type, id, int(version))
    if found is None:
        raise FhirError.single(
            404, "not-found", f"{resource_type}/{id} has no version {version} in the record"
        )
    return fhir_bytes(
        found.raw.encode() if isinstance(found.raw, str) else found.raw,
        headers={
            "ETag": f'W/"{found.version_id}"',
            "Last-Modified": http_date(found.last_updated),
        },
    )


# --- search --------------------------------------------------------------------------------------


@fhir.get("/{resource_type}", summary="Search (see /metadata for the parameters of each type)")
async def search_type(
    request: Request, ctx: Ctx, resource_type: ResourceType, principal: Caller
) -> Response:
    items = list(request.query_params.multi_items())
    return await _search(request, ctx, resource_type, principal, items)


@fhir.post("/{resource_type}/_search", summary="Search with the parameters in a form body")
async def search_post(
    request: Request, ctx: Ctx, resource_type: ResourceType, principal: Caller
) -> Response:
    content_type = request.headers.get("content-type", "")
    if not content_type.startswith("application/x-www-form-urlencoded"):
        raise FhirError.single(
            415, "not-supported", "_search takes application/x-www-form-urlencoded"
        )
    body = (await request.body()).decode(errors="replace")
    items = list(request.query_params.multi_items()) + parse_qsl(body, keep_blank_values=True)
    return await _search(request, ctx, resource_type, principal, items)


async def _search(
    request: Request,
    ctx: Ctx,
    resource_type: str,
    principal: Principal,
    items: list[tuple[str, str]],
) -> Response:
    supported(resource_type)
    require(principal, resource_type, "s")
    settings = _settings(ctx)
    limits = Limits(settings.record_default_count, settings.record_max_count)
    search = parse_search(resource_type, items, handling=handling(request), limits=limits)
    base = base_url(request)
    self_link = ("self", link(request, resource_type, search.used))
    async with _database(ctx)() as session:
        if search.summary_count:
            counted = (await session.execute(count_query(search))).scalar_one()
            entries = [ignored_outcome(search.ignored)] if search.ignored else []
            return fhir_bytes(bundle("searchset", entries, links=[self_link], total=counted))
        rows = (await session.execute(page_query(search))).all()
        more = len(rows) > search.count
        page = rows[: search.count]
        matches = [
            repository.StoredResource(
                resource_type,
                r.id,
                r.version_id,
                repository.aware(r.last_updated),
                r.patient_key,
                r.source,
                r.raw,
                r.setting,
            )
            for r in page
        ]
        included = await _included(session, search, matches, principal, settings)
        before = int(search.cursor[-1]) if search.cursor else 0
        if search.total == "accurate":
            total: int | None = (await session.execute(count_query(search))).scalar_one()
        else:
            total = before + len(matches) if not more else None
    entries = [Entry(f"{base}/{r.resource_type}/{r.id}", r.raw) for r in matches]
    entries += [Entry(f"{base}/{r.resource_type}/{r.id}", r.raw, "include") for r in included]
    links = [self_link]
    if more:
        last = page[-1]
        values: list[Any] = [getattr(last, f"s{n}") for n in range(len(search.sort))]
        cursor = encode_cursor([*values, last.id, before + len(matches)])
        links.append(("next", link(request, resource_type, [*search.used, ("_cursor", cursor)])))
    notes = list(search.ignored)
    if included and len(included) >= settings.record_revinclude_limit:
        notes.append("_revinclude (cut at its limit)")
    if notes:
        entries.append(ignored_outcome(notes))
    return fhir_bytes(bundle("searchset", entries, links=links, total=total))


async def _included(
    session: AsyncSession,
    search: Search,
    matches: list[repository.StoredResource],
    principal: Principal,
    settings: RecordSettings,
) -> list[repository.StoredResource]:
    if not matches or not (search.includes or search.revincludes):
        return []
    seen = {r.key for r in matches}
    wanted: set[repository.ResourceKey] = set()
    for include in search.includes:
        for resource in matches:
            for target in references_of(resource.content, include.param):
                if include.target_type and target[0] != include.target_type:
                    continue
                wanted.add(target)
    extra = [
        r
        for r in await repository.read_many(session, wanted - seen)
        if may(principal, r.resource_type, "r")
    ]
    seen |= {r.key for r in extra}
    ids = [r.id for r in matches]
    limit = settings.record_revinclude_limit
    for include in search.revincludes:
        if not may(principal, include.source_type, "r"):
            continue
        query = revinclude_query(include, search.resource_type, ids, limit)
        for row in await session.execute(query):
            resource = repository.stored(row)
            if resource.key not in seen:
                seen.add(resource.key)
                extra.append(resource)
    return extra


# --- read ----------------------------------------------------------------------------------------


@fhir.get("/{resource_type}/{id}", summary="Read the current version of a resource")
async def read_resource(
    request: Request, ctx: Ctx, resource_type: ResourceType, id: ResourceId, principal: Caller
) -> Response:
    supported(resource_type)
    require(principal, resource_type, "r")
    async with _database(ctx)() as session:
        found = await repository.read(session, resource_type, id)
    if found is None:
        raise FhirError.single(404, "not-found", f"{resource_type}/{id} is not in the record")
    headers = {
        "ETag": f'W/"{found.version_id}"',
        "Last-Modified": http_date(found.last_updated),
    }
    if _etag_matches(request, found.version_id):
        return Response(status_code=304, headers=headers)
    return fhir_bytes(found.body, headers=headers)


# --- summary -------------------------------------------------------------------------------------

summary_router = APIRouter(tags=["summary"])


@summary_router.get(
    "/summary/{patient}",
    summary="One person across providers, at a glance (a Patient id or an NHS number)",
)
async def patient_summary(ctx: Ctx, patient: ResourceId, principal: Caller) -> Response:
    require(principal, "Patient", "r")
    settings = _settings(ctx)
    async with _database(ctx)() as session:
        found = await summary.build(
            session,
            patient,
            readable=lambda t: may(principal, t, "r"),
            feeds=ctx.feeds,
            recent=settings.record_summary_recent,
        )
    return Response(orjson.dumps(found), media_type="application/json")


router.include_router(fhir)
router.include_router(summary_router)
