"""The record's FHIR REST API (thin: reading and shaping only; queries live in repository)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Path, Query, Request
from fastapi.responses import Response
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from fhir_common.auth import Principal, get_principal, requires
from fhir_common.errors import FhirError, fhir_response
from fhir_common.service import ServiceContext, context
from record import repository
from record.bundles import searchset
from record.capability import capability_statement
from record.settings import RecordSettings

router = APIRouter(prefix="/fhir", tags=["FHIR"])

ResourceType = Annotated[str, Path(pattern=r"^[A-Z][A-Za-z]{1,63}$")]
ResourceId = Annotated[str, Path(pattern=r"^[A-Za-z0-9\-.]{1,64}$")]
Ctx = Annotated[ServiceContext, Depends(context)]


def _base_url(request: Request) -> str:
    return str(request.url_for("capabilities")).removesuffix("/metadata")


def _count(ctx: ServiceContext, requested: int | None) -> int:
    settings = ctx.settings
    assert isinstance(settings, RecordSettings)
    return min(requested or settings.record_default_count, settings.record_max_count)


def _database(ctx: ServiceContext) -> async_sessionmaker[AsyncSession]:
    assert ctx.db is not None
    return ctx.db.sessions


def _token(text: str) -> tuple[str | None, str]:
    """A FHIR token search value: ``system|code``, ``|code`` (no system) or ``code`` (any)."""
    if "|" not in text:
        return None, text
    system, _, value = text.partition("|")
    return system, value


@router.get("/metadata", name="capabilities", summary="CapabilityStatement")
async def capabilities(request: Request) -> Response:
    return fhir_response(capability_statement(request.app.version))


@router.get("/Patient", summary="Search patients by identifier")
async def search_patients(
    request: Request,
    ctx: Ctx,
    _: Annotated[Principal, Depends(requires("Patient", "s"))],
    identifier: Annotated[str, Query(description="system|value, or value")],
    count: Annotated[int | None, Query(alias="_count", ge=1)] = None,
) -> Response:
    system, value = _token(identifier)
    if not value:
        raise FhirError.single(400, "invalid", "identifier needs a value", ["identifier"])
    async with _database(ctx)() as session:
        found = await repository.find_by_identifier(
            session, "Patient", system, value, _count(ctx, count)
        )
    return fhir_response(searchset(_base_url(request), str(request.url), found, len(found)))


@router.get("/Patient/{id}/$everything", summary="Everything about one patient, from every feed")
async def patient_everything(
    request: Request,
    ctx: Ctx,
    id: ResourceId,
    principal: Annotated[Principal, Depends(requires("Patient", "r"))],
) -> Response:
    async with _database(ctx)() as session:
        patient = await repository.read(session, "Patient", id)
        if patient is None:
            raise FhirError.single(404, "not-found", f"Patient/{id} is not in the record")
        key = patient.patient_key
        related = await repository.for_patient(session, key, limit=10_000) if key else [patient]
    visible = [r for r in related if principal.allows(r.resource_type, "r")]
    # The patient asked for comes first; other source patients linked by NHS number follow.
    visible.sort(key=lambda r: (r.id != id, r.resource_type != "Patient"))
    return fhir_response(searchset(_base_url(request), str(request.url), visible, len(visible)))


@router.get("/{resource_type}/{id}", summary="Read the current version of a resource")
async def read_resource(
    ctx: Ctx,
    resource_type: ResourceType,
    id: ResourceId,
    principal: Annotated[Principal, Depends(get_principal)],
) -> Response:
    principal.require(resource_type, "r")
    async with _database(ctx)() as session:
        found = await repository.read(session, resource_type, id)
    if found is None:
        raise FhirError.single(404, "not-found", f"{resource_type}/{id} is not in the record")
    return fhir_response(
        found.content,
        headers={
            "ETag": f'W/"{found.version_id}"',
            "Last-Modified": found.last_updated.strftime("%a, %d %b %Y %H:%M:%S GMT"),
        },
    )
