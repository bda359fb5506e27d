"""ingest-gp's HTTP interface: provider systems push FHIR Bundles here."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response

from fhir_common.auth import Principal, get_principal
from fhir_common.errors import FhirError, fhir_response
from fhir_common.feeds import FeedKind, authorise_push
from fhir_common.service import ServiceContext, context, read_limited
from ingest_gp.bundles import receive_bundle
from ingest_gp.settings import IngestGpSettings

router = APIRouter(tags=["ingest"])

JSON_TYPES = ("application/fhir+json", "application/json")


@router.post(
    "/fhir",
    summary="Push a FHIR Bundle (transaction, batch or collection)",
    response_description="transaction-response or batch-response Bundle",
)
async def push_bundle(
    request: Request,
    ctx: Annotated[ServiceContext, Depends(context)],
    principal: Annotated[Principal, Depends(get_principal)],
) -> Response:
    feed = authorise_push(ctx.feeds, principal, {FeedKind.FHIR})
    media_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media_type not in JSON_TYPES:
        raise FhirError.single(
            415, "not-supported", f"send application/fhir+json, not {media_type or 'nothing'}"
        )
    settings = ctx.settings
    assert isinstance(settings, IngestGpSettings)
    body = await read_limited(request, settings.ingest_gp_max_bundle_bytes)
    return fhir_response(await receive_bundle(ctx, feed, principal, body))
