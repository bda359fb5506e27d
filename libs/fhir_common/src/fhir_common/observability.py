"""Structured JSON logs, Prometheus metrics, and W3C trace context from HTTP to Kafka and on.

The trace context is a ``traceparent`` string held in a context variable: the HTTP middleware
sets it from the request (or starts a new trace), ``events.event_headers`` puts a child of it on
every message published, and the bus sets it from the message a handler handles, so one trace
id follows an event from the provider's push to every service it touches.
"""

from __future__ import annotations

import logging
import re
import secrets
import sys
import time
from collections.abc import Awaitable, Callable
from contextvars import ContextVar

from fastapi import FastAPI, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, Counter, Histogram, generate_latest
from pythonjsonlogger.json import JsonFormatter

_TRACEPARENT = re.compile(r"^00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})$")
current_traceparent: ContextVar[str | None] = ContextVar("traceparent", default=None)

HTTP_REQUESTS = Counter(
    "joinedup_http_requests_total", "HTTP requests", ["service", "method", "status"]
)
HTTP_LATENCY = Histogram(
    "joinedup_http_request_seconds", "HTTP request latency", ["service", "method"]
)
MESSAGES_PUBLISHED = Counter("joinedup_bus_published_total", "Messages published", ["topic"])
CHANGES_SEEN = Counter(
    "joinedup_record_changes_seen_total",
    "record.changes events a service has taken in",
    ["service", "resource_type"],
)
MESSAGES_HANDLED = Counter(
    "joinedup_bus_handled_total", "Messages handled by consumers", ["group", "outcome"]
)


def new_traceparent() -> str:
    # Version 00, random trace and span ids, sampled.
    return f"00-{secrets.token_hex(16)}-{secrets.token_hex(8)}-01"


def child_traceparent(parent: str | None) -> str:
    """Same trace as ``parent`` with a new span id; a new trace if the parent is unusable."""
    match = _TRACEPARENT.match(parent or "")
    if not match or match.group(1) == "0" * 32:
        return new_traceparent()
    return f"00-{match.group(1)}-{secrets.token_hex(8)}-{match.group(3)}"


def trace_id(traceparent: str | None) -> str | None:
    match = _TRACEPARENT.match(traceparent or "")
    return match.group(1) if match else None


class _TraceFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.trace_id = trace_id(current_traceparent.get())
        return True


def configure_logging(level: str = "INFO", json_logs: bool = True) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if json_logs:
        handler.setFormatter(
            JsonFormatter(
                "%(asctime)s %(levelname)s %(name)s %(message)s %(trace_id)s",
                rename_fields={"asctime": "time", "levelname": "level", "name": "logger"},
            )
        )
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    handler.addFilter(_TraceFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # aiokafka is chatty at INFO about every rebalance and connection
    logging.getLogger("aiokafka").setLevel(max(logging.WARNING, root.level))


def install_observability(app: FastAPI, service: str) -> None:
    """Trace context and request metrics for every request, and ``GET /metrics``."""

    @app.middleware("http")
    async def trace_and_measure(
        request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        traceparent = child_traceparent(request.headers.get("traceparent"))
        token = current_traceparent.set(traceparent)
        started = time.perf_counter()
        try:
            response = await call_next(request)
        finally:
            current_traceparent.reset(token)
        HTTP_LATENCY.labels(service, request.method).observe(time.perf_counter() - started)
        HTTP_REQUESTS.labels(service, request.method, str(response.status_code)).inc()
        response.headers["traceparent"] = traceparent
        return response

    @app.get("/metrics", include_in_schema=False)
    async def metrics() -> Response:
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)
