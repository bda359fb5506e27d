"""The app factory every service uses, so that all six look and behave the same.

It gives each service ``/health``, ``/ready`` (its database and bus answer), ``/metrics``,
OpenAPI at ``/docs``, OperationOutcome errors, trace propagation, token verification, and a
lifespan that migrates the service's schema, registers its consumers and runs the bus.
In embedded mode the bus is shared and started by the embedding process instead.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import Response

from fhir_common.auth import LocalSigner, TokenVerifier
from fhir_common.bus import Bus, create_bus
from fhir_common.db import Database
from fhir_common.errors import FhirError, Issue, fhir_response, install_error_handlers
from fhir_common.feeds import FeedRegistry
from fhir_common.observability import configure_logging, install_observability
from fhir_common.settings import Settings


@dataclass
class ServiceContext:
    """What a running service has: handed to consumers and reachable from routes."""

    name: str
    settings: Settings
    bus: Bus
    db: Database | None
    feeds: FeedRegistry


@dataclass(frozen=True)
class ServiceSpec:
    name: str
    description: str
    router: APIRouter
    schema: str | None = None  # database schema it owns, if any
    migrations: Path | None = None
    # registers the service's consumers on the bus (and anything else it must start)
    on_start: Callable[[ServiceContext], Awaitable[None]] | None = None
    on_stop: Callable[[ServiceContext], Awaitable[None]] | None = None
    version: str = "0.1.0"


def token_verifier(settings: Settings) -> TokenVerifier:
    if settings.auth_jwks_url or settings.auth_public_key_file:
        pem = settings.auth_public_key_file.read_text() if settings.auth_public_key_file else None
        return TokenVerifier(
            issuer=settings.auth_issuer,
            audience=settings.auth_audience,
            public_key_pem=pem,
            jwks_url=settings.auth_jwks_url,
        )
    if not settings.embedded:
        raise ValueError(
            "distributed mode needs JOINEDUP_AUTH_PUBLIC_KEY_FILE or JOINEDUP_AUTH_JWKS_URL"
        )
    signer = LocalSigner.load_or_create(settings.signing_key_file())
    return TokenVerifier(
        issuer=settings.auth_issuer,
        audience=settings.auth_audience,
        public_key_pem=signer.public_key_pem(),
    )


def context(request: Request) -> ServiceContext:
    """FastAPI dependency: the running service's context."""
    ctx: ServiceContext = request.app.state.ctx
    return ctx


def create_service_app(
    spec: ServiceSpec, settings: Settings | None = None, bus: Bus | None = None
) -> FastAPI:
    """Build the service; pass ``bus`` to share one (embedded mode) instead of owning one."""
    settings = settings or Settings()
    owns_bus = bus is None

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        the_bus = bus or create_bus(settings, client_id=spec.name)
        db = Database(settings.resolved_database_url(), spec.schema) if spec.schema else None
        if db and spec.migrations and settings.auto_migrate:
            await db.migrate(spec.migrations)
        ctx = ServiceContext(
            spec.name, settings, the_bus, db, FeedRegistry(settings.resolved_feeds_file())
        )
        app.state.ctx = ctx
        app.state.token_verifier = token_verifier(settings)
        if spec.on_start:
            await spec.on_start(ctx)
        if owns_bus:
            await the_bus.start()
        try:
            yield
        finally:
            # Stop taking input first (listeners), then let the bus finish what it holds.
            if spec.on_stop:
                await spec.on_stop(ctx)
            if owns_bus:
                await the_bus.stop()
            if db:
                await db.dispose()

    if owns_bus:
        configure_logging(settings.log_level, settings.log_json)
    app = FastAPI(
        title=f"JoinedUp {spec.name}",
        description=spec.description,
        version=spec.version,
        lifespan=lifespan,
    )
    install_error_handlers(app)
    install_observability(app, spec.name)
    app.include_router(_probes(spec.name))
    app.include_router(spec.router)
    return app


def _probes(service: str) -> APIRouter:
    router = APIRouter(tags=["operations"])

    @router.get("/health", summary="The process is up")
    async def health() -> dict[str, str]:
        return {"status": "ok", "service": service}

    @router.get("/ready", summary="The service's database and bus answer")
    async def ready(request: Request) -> Response:
        ctx: ServiceContext = request.app.state.ctx
        problems: list[Issue] = []
        checks: list[tuple[str, Callable[[], Awaitable[None]]]] = [("bus", ctx.bus.ping)]
        if ctx.db:
            checks.append(("database", ctx.db.ping))
        for name, check in checks:
            try:
                await check()
            except Exception as error:
                problems.append(
                    Issue(code="transient", diagnostics=f"{name} not ready: {error!r}"[:500])
                )
        if problems:
            raise FhirError(503, problems)
        return fhir_response({"status": "ready", "service": service})

    return router


async def read_limited(request: Request, limit: int) -> bytes:
    """The request body, refused with 413 as soon as it is known to exceed ``limit`` bytes
    (from Content-Length, or while streaming), so an oversized push is never held whole."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise _too_large(limit)
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise _too_large(limit)
        chunks.append(chunk)
    return b"".join(chunks)


def _too_large(limit: int) -> FhirError:
    return FhirError.single(413, "too-costly", f"request body larger than {limit} bytes")
