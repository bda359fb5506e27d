"""ingest-gp's HTTP interface.

* ``POST /fhir``: a Bundle (transaction, batch or collection), JSON or XML.
* ``POST /fhir/$import``, ``GET``/``DELETE /fhir/$import-status/{id}``: bulk NDJSON import.
* ``POST /csv``: a CSV extract, mapped by the feed's mapping file.
* ``GET /fhir/metadata``: the CapabilityStatement.

Every push needs a feed's token (``fhir_common.feeds.authorise_push``) of the right kind; a token
that names an organisation must name the feed's own ODS code.
"""

from __future__ import annotations

import uuid
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response

from fhir_common.auth import Principal, get_principal
from fhir_common.errors import FhirError, Issue, fhir_response, operation_outcome
from fhir_common.feeds import Feed, FeedKind, authorise_push
from fhir_common.service import ServiceContext, context, read_limited
from fhir_common.validation import parse_json
from ingest_gp import bulk, fhirxml, formats, runtime
from ingest_gp.bundles import receive_bundle
from ingest_gp.csvingest import receive_csv, spool

router = APIRouter(tags=["ingest"])

Ctx = Annotated[ServiceContext, Depends(context)]
Caller = Annotated[Principal, Depends(get_principal)]


def authorise(ctx: ServiceContext, principal: Principal, kinds: set[FeedKind]) -> Feed:
    feed = authorise_push(ctx.feeds, principal, kinds)
    if principal.org is not None and principal.org != feed.ods:
        raise FhirError.single(
            403,
            "forbidden",
            f"the token speaks for organisation {principal.org!r}, but feed {feed.id!r} is "
            f"{feed.ods!r}",
        )
    return feed


def _read_resource(body: bytes, fmt: formats.Format) -> Any:
    return fhirxml.read_xml(body) if fmt == "xml" else parse_json(body)


@router.get("/fhir/metadata", summary="CapabilityStatement")
async def metadata(request: Request) -> Response:
    return formats.render(capability_statement(), formats.wanted(request))


@router.post(
    "/fhir",
    summary="Push a FHIR Bundle (transaction, batch or collection), JSON or XML",
    response_description="transaction-response or batch-response Bundle",
)
async def push_bundle(request: Request, ctx: Ctx, principal: Caller) -> Response:
    feed = authorise(ctx, principal, {FeedKind.FHIR})
    try:
        fmt = formats.body_format(request)
    except FhirError as error:
        return formats.render_error(error, formats.wanted(request))
    answer = formats.wanted(request, fmt)
    run = runtime.of(ctx)
    try:
        body = await read_limited(request, run.settings.ingest_gp_max_bundle_bytes)
        try:
            bundle = _read_resource(body, fmt)
        except FhirError as error:
            await ctx.bus.dead_letter(
                value=body, source=feed.id, error=str(error), service=ctx.name, origin="POST /fhir"
            )
            raise
        response, received = await receive_bundle(
            ctx,
            feed,
            principal,
            bundle,
            body,
            run.pool,
            run.settings.ingest_gp_parallel_threshold,
        )
    except FhirError as error:
        return formats.render_error(error, answer)
    headers = {
        "X-Published": str(received.outcome.published),
        "X-Unchanged": str(received.outcome.unchanged),
    }
    return formats.render(response, answer, headers=headers)


# --- $import -------------------------------------------------------------------------------------


@router.post(
    "/fhir/$import",
    summary="Bulk import NDJSON (upload, or Parameters naming file:// inputs)",
    status_code=202,
)
async def kick_off_import(request: Request, ctx: Ctx, principal: Caller) -> Response:
    feed = authorise(ctx, principal, {FeedKind.FHIR})
    run = runtime.of(ctx)
    answer = formats.wanted(request)
    root = bulk.import_root(run.settings)
    kind = formats.media_type(request)
    job_id = str(uuid.uuid4())
    try:
        if kind in bulk.NDJSON_TYPES:
            path, _ = await bulk.spool_upload(
                request, root, job_id, run.settings.ingest_gp_max_upload_bytes
            )
            inputs = [bulk.Input(path=str(path))]
            uploaded, source = True, None
        else:
            fmt = formats.body_format(request)
            body = await read_limited(request, 1024 * 1024)
            inputs, source = bulk.inputs_from_parameters(_read_resource(body, fmt), root)
            uploaded = False
        await run.importer.create(
            feed,
            principal,
            inputs,
            job_id=job_id,
            uploaded=uploaded,
            source=source,
            request_url=str(request.url),
        )
    except FhirError as error:
        return formats.render_error(error, answer)
    status_url = str(request.url_for("import_status", job_id=job_id))
    outcome = operation_outcome(
        [Issue("informational", f"import job {job_id} accepted; poll {status_url}", "information")]
    )
    return formats.render(outcome, answer, 202, {"Content-Location": status_url})


@router.get("/fhir/$import-status/{job_id}", name="import_status", summary="Import job status")
async def import_status(job_id: str, request: Request, ctx: Ctx, principal: Caller) -> Response:
    feed = authorise(ctx, principal, {FeedKind.FHIR})
    run = runtime.of(ctx)
    answer = formats.wanted(request)
    try:
        row = await run.importer.job(job_id, feed)
    except FhirError as error:
        return formats.render_error(error, answer)
    progress = bulk.progress_text(row)
    if row.status in bulk.ACTIVE:
        outcome = operation_outcome([Issue("informational", progress, "information")])
        headers = {"X-Progress": progress, "Retry-After": "2"}
        return formats.render(outcome, answer, 202, headers)
    if row.status == "cancelled":
        text = f"import job {job_id} was cancelled ({progress})"
        return formats.render(operation_outcome([Issue("not-found", text)]), answer, 404)
    if row.status == "failed":
        text = f"import job {job_id} failed: {row.error} ({progress})"
        return formats.render(operation_outcome([Issue("exception", text)]), answer, 500)
    errors = await run.importer.errors(job_id)
    return fhir_response(bulk.report(row, errors, str(request.url)))


@router.delete("/fhir/$import-status/{job_id}", summary="Cancel (or forget) an import job")
async def cancel_import(job_id: str, request: Request, ctx: Ctx, principal: Caller) -> Response:
    feed = authorise(ctx, principal, {FeedKind.FHIR})
    run = runtime.of(ctx)
    answer = formats.wanted(request)
    try:
        before = await run.importer.cancel(job_id, feed)
    except FhirError as error:
        return formats.render_error(error, answer)
    text = (
        f"import job {job_id} cancelled"
        if before in bulk.ACTIVE
        else f"import job {job_id} ({before}) forgotten"
    )
    return formats.render(
        operation_outcome([Issue("informational", text, "information")]), answer, 202
    )


# --- CSV -----------------------------------------------------------------------------------------


@router.post("/csv", summary="Push a CSV extract (text/csv), mapped by the feed's mapping file")
async def push_csv(request: Request, ctx: Ctx, principal: Caller) -> Response:
    feed = authorise(ctx, principal, {FeedKind.CSV})
    run = runtime.of(ctx)
    kind = formats.media_type(request)
    if kind not in ("text/csv", "application/csv"):
        raise FhirError.single(415, "not-supported", f"send text/csv, not {kind or 'nothing'}")
    mapping = run.mappings.get(feed)
    body = await spool(request, run.settings.ingest_gp_max_csv_bytes)
    try:
        report = await receive_csv(
            ctx,
            feed,
            mapping,
            body,
            run.pool,
            request.headers.get("x-extract-name"),
            run.settings.ingest_gp_parallel_threshold,
        )
    finally:
        body.close()
    if report.rows and not report.accepted:
        return fhir_response(report.outcome_of_failure(), 422)
    return fhir_response(report.to_json())


# --- CapabilityStatement -------------------------------------------------------------------------


def capability_statement() -> dict[str, Any]:
    return {
        "resourceType": "CapabilityStatement",
        "status": "active",
        "date": "2026-11-24",
        "kind": "instance",
        "software": {"name": "JoinedUp ingest-gp"},
        "fhirVersion": "4.0.1",
        "format": ["application/fhir+json", "application/fhir+xml"],
        "rest": [
            {
                "mode": "server",
                "documentation": (
                    "Provider feeds push Bundles (transaction, batch, collection) and bulk "
                    "NDJSON ($import). Bearer token of a registered feed required."
                ),
                "security": {
                    "service": [
                        {
                            "coding": [
                                {
                                    "system": "http://terminology.hl7.org/CodeSystem/restful-security-service",
                                    "code": "SMART-on-FHIR",
                                }
                            ]
                        }
                    ]
                },
                "interaction": [{"code": "transaction"}, {"code": "batch"}],
                "operation": [
                    {
                        "name": "import",
                        "definition": "http://hl7.org/fhir/uv/bulkdata/OperationDefinition/import",
                    }
                ],
            }
        ],
    }
