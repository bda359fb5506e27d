"""FHIR formats on the wire: what a request body is and what the caller wants back.

Requests may be ``application/fhir+json`` (or ``application/json``) or ``application/fhir+xml``
(or ``application/xml``). The answer is in the format the ``_format`` parameter names, else the
best one ``Accept`` allows, else the request's own format (FHIR http "Content Types").
"""

from __future__ import annotations

from typing import Any, Literal

from fastapi import Request
from fastapi.responses import Response

from fhir_common.errors import FhirError, fhir_response
from ingest_gp import fhirxml

Format = Literal["json", "xml"]
FHIR_JSON = "application/fhir+json"
FHIR_XML = "application/fhir+xml"
JSON_TYPES = ("application/fhir+json", "application/json", "text/json")
XML_TYPES = ("application/fhir+xml", "application/xml", "text/xml")
_FORMAT_PARAM = {
    "json": "json",
    "xml": "xml",
    "application/json": "json",
    "application/fhir+json": "json",
    "application/xml": "xml",
    "application/fhir+xml": "xml",
    "text/xml": "xml",
}


def media_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";")[0].strip().lower()


def body_format(request: Request) -> Format:
    """The format of the request body; 415 for anything else."""
    kind = media_type(request)
    if kind in JSON_TYPES:
        return "json"
    if kind in XML_TYPES:
        return "xml"
    raise FhirError.single(
        415,
        "not-supported",
        f"send {FHIR_JSON} or {FHIR_XML}, not {kind or 'nothing'}",
    )


def wanted(request: Request, default: Format = "json") -> Format:
    """The answer's format: ``_format``, else ``Accept`` (by q-value), else ``default``."""
    param = request.query_params.get("_format", "").strip().lower()
    if param:
        return _FORMAT_PARAM.get(param.split(";")[0].strip(), default)  # type: ignore[return-value]
    accept = request.headers.get("accept", "")
    best: tuple[float, int, Format] | None = None
    for position, part in enumerate(accept.split(",")):
        fields = [f.strip() for f in part.split(";")]
        kind = fields[0].lower()
        quality = 1.0
        for f in fields[1:]:
            if f.startswith("q="):
                try:
                    quality = float(f[2:])
                except ValueError:
                    quality = 0.0
        if kind in JSON_TYPES:
            found: Format = "json"
        elif kind in XML_TYPES:
            found = "xml"
        elif kind in ("*/*", "application/*"):
            found = default
        else:
            continue
        if quality > 0 and (best is None or (quality, -position) > (best[0], best[1])):
            best = (quality, -position, found)
    return best[2] if best else default


def render(
    resource: dict[str, Any], fmt: Format, status: int = 200, headers: dict[str, str] | None = None
) -> Response:
    if fmt == "xml":
        return Response(
            content=fhirxml.write_xml(resource),
            status_code=status,
            media_type=FHIR_XML,
            headers=headers,
        )
    return fhir_response(resource, status, headers)


def render_error(error: FhirError, fmt: Format) -> Response:
    return render(error.outcome(), fmt, error.status)
