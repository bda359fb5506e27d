"""ingest-acute's HTTP interface: HL7 v2 messages POSTed by a feed, answered with HL7 ACKs."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response

from fhir_common.auth import Principal, get_principal
from fhir_common.errors import FhirError
from fhir_common.feeds import FeedKind, authorise_push
from fhir_common.service import ServiceContext, context
from ingest_acute.er7 import split_messages
from ingest_acute.intake import Arrival
from ingest_acute.runtime import AcuteRuntime

router = APIRouter(tags=["ingest"])

ER7_MEDIA_TYPE = "x-application/hl7-v2+er7"


@router.post(
    "/hl7v2",
    summary="Push HL7 v2 messages (ER7; one or more, batch envelopes allowed)",
    response_description="one HL7 ACK per message, in order (MSA AA, AE or AR with ERR)",
    response_class=Response,
)
async def push_hl7v2(
    request: Request,
    ctx: Annotated[ServiceContext, Depends(context)],
    principal: Annotated[Principal, Depends(get_principal)],
) -> Response:
    feed = authorise_push(ctx.feeds, principal, {FeedKind.HL7V2})
    runtime: AcuteRuntime = request.app.state.acute
    body = await _body(request, runtime.settings.hl7v2_http_max_body_bytes)
    messages = split_messages(body)
    if not messages:
        raise FhirError.single(400, "required", "the body holds no HL7 v2 message")
    arrival = Arrival("http", "POST /hl7v2", feed)
    acks = [(await runtime.intake.receive(message, arrival)).ack for message in messages]
    return Response(content=b"".join(acks), media_type=ER7_MEDIA_TYPE)


async def _body(request: Request, limit: int) -> bytes:
    """The request body, refused (413) as soon as it is larger than ``limit``."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise FhirError.single(413, "too-costly", f"body larger than {limit} bytes")
    chunks = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise FhirError.single(413, "too-costly", f"body larger than {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)
