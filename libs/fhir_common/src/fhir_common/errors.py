"""One exception type that carries a FHIR OperationOutcome, and the handler that renders it.

Every service raises ``FhirError`` for anything a client did wrong or anything we could not do;
the handler installed by ``install_error_handlers`` turns it (and FastAPI's own validation and
HTTP errors) into ``application/fhir+json`` OperationOutcome responses with the right status.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from starlette.exceptions import HTTPException as StarletteHTTPException

FHIR_JSON = "application/fhir+json"

Severity = Literal["fatal", "error", "warning", "information"]


@dataclass(frozen=True)
class Issue:
    """One OperationOutcome.issue: what went wrong, how bad, and where (FHIRPath expressions)."""

    code: str
    diagnostics: str
    severity: Severity = "error"
    expression: Sequence[str] = field(default_factory=tuple)

    def to_fhir(self) -> dict[str, Any]:
        issue: dict[str, Any] = {
            "severity": self.severity,
            "code": self.code,
            "diagnostics": self.diagnostics,
        }
        if self.expression:
            issue["expression"] = list(self.expression)
        return issue


def operation_outcome(issues: Iterable[Issue]) -> dict[str, Any]:
    return {"resourceType": "OperationOutcome", "issue": [i.to_fhir() for i in issues]}


class FhirError(Exception):
    """A failure to report to the caller as an OperationOutcome with an HTTP status."""

    def __init__(self, status: int, issues: Sequence[Issue]) -> None:
        if not issues:
            raise ValueError("FhirError needs at least one issue")
        super().__init__("; ".join(i.diagnostics for i in issues))
        self.status = status
        self.issues = list(issues)

    @classmethod
    def single(
        cls, status: int, code: str, diagnostics: str, expression: Sequence[str] = ()
    ) -> FhirError:
        return cls(status, [Issue(code=code, diagnostics=diagnostics, expression=expression)])

    def outcome(self) -> dict[str, Any]:
        return operation_outcome(self.issues)


def fhir_response(
    body: Any, status: int = 200, headers: Mapping[str, str] | None = None
) -> Response:
    return Response(
        content=orjson.dumps(body), status_code=status, media_type=FHIR_JSON, headers=headers
    )


_HTTP_STATUS_CODES = {
    400: "invalid",
    401: "login",
    403: "forbidden",
    404: "not-found",
    405: "not-supported",
    409: "conflict",
    410: "deleted",
    412: "conflict",
    413: "too-costly",
    415: "not-supported",
    422: "processing",
    429: "throttled",
}


def _issue_code_for_status(status: int) -> str:
    return _HTTP_STATUS_CODES.get(status, "exception" if status >= 500 else "invalid")


async def _fhir_error_handler(_: Request, exc: Exception) -> Response:
    assert isinstance(exc, FhirError)
    headers = {"WWW-Authenticate": 'Bearer realm="joinedup"'} if exc.status == 401 else None
    return fhir_response(exc.outcome(), exc.status, headers)


async def _http_error_handler(_: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    issue = Issue(code=_issue_code_for_status(exc.status_code), diagnostics=str(exc.detail))
    return fhir_response(operation_outcome([issue]), exc.status_code, exc.headers)


async def _request_validation_handler(_: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    issues = [
        Issue(
            code="invalid",
            diagnostics=str(err.get("msg", "invalid request")),
            expression=[".".join(str(p) for p in err.get("loc", ()))],
        )
        for err in exc.errors()
    ]
    return fhir_response(operation_outcome(issues), 400)


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(FhirError, _fhir_error_handler)
    app.add_exception_handler(StarletteHTTPException, _http_error_handler)
    app.add_exception_handler(RequestValidationError, _request_validation_handler)
