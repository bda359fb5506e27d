"""Embedded mode: every service in one process under its DESIGN.md prefix, one in-process bus,
SQLite under the data directory. The same service code runs as in distributed mode."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

from fastapi import FastAPI
from fastapi.responses import HTMLResponse

from fhir_common.bus import InProcessBus
from fhir_common.settings import Mode
from joinedup.services import SERVICES

StartupHook = Callable[[FastAPI], Awaitable[None]]


def create_embedded_app(
    data_dir: Path,
    *,
    on_started: StartupHook | None = None,
    overrides: dict[str, Any] | None = None,
) -> FastAPI:
    """The whole platform as one ASGI app; ``on_started`` runs once everything consumes."""
    bus = InProcessBus()
    # Embedded means SQLite and the in-process bus, whatever JOINEDUP_DATABASE_URL or
    # JOINEDUP_KAFKA_BOOTSTRAP say (make test exports them for the distributed tests).
    settings = {
        "mode": Mode.EMBEDDED,
        "data_dir": data_dir,
        "database_url": None,
        "kafka_bootstrap": None,
        **(overrides or {}),
    }
    services = {name: entry.build(bus, **settings) for name, entry in SERVICES.items()}

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with contextlib.AsyncExitStack() as stack:
            # Runs last: every service has stopped taking input before the bus stops.
            stack.push_async_callback(bus.stop)
            for service in services.values():
                await stack.enter_async_context(service.router.lifespan_context(service))
            await bus.start()
            if on_started:
                await on_started(app)
            yield

    app = FastAPI(title="JoinedUp (embedded)", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.bus = bus
    app.state.services = services
    app.state.data_dir = data_dir

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def home() -> str:
        return _home_page()

    @app.get("/health", include_in_schema=False)
    async def health() -> dict[str, str]:
        return {"status": "ok", "mode": "embedded"}

    for name, service in services.items():
        app.mount(f"/{name}", service)
    return app


def _home_page() -> str:
    links = "".join(
        f'<li><a href="/{n}/docs">{n}</a> — <a href="/{n}/health">health</a></li>' for n in SERVICES
    )
    return f"""<!doctype html><html><head><title>JoinedUp</title></head><body>
<h1>JoinedUp — embedded mode</h1>
<p>Every service runs in this process. Each needs a bearer token:
<code>uv run joinedup token</code> (add <code>--feed ID</code> for a provider's push token).</p>
<ul>{links}</ul>
<p>Try: <code>curl -H "Authorization: Bearer $(uv run joinedup token)"
 localhost:8000/record/fhir/Patient?identifier=...</code></p>
</body></html>"""
