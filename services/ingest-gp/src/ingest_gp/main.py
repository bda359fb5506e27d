"""ingest-gp: FHIR bundles (JSON or XML), bulk NDJSON imports and CSV extracts from GP,
community, mental-health and social-care systems, into FHIR resources on ``fhir.<ResourceType>``
topics."""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI

from fhir_common.bus import Bus
from fhir_common.service import ServiceContext, ServiceSpec, create_service_app
from ingest_gp import consumer, runtime
from ingest_gp.routes import router
from ingest_gp.settings import IngestGpSettings
from ingest_gp.tables import SCHEMA

NAME = "ingest-gp"


async def _start(ctx: ServiceContext) -> None:
    consumer.register(ctx)
    await runtime.start(ctx)


async def _stop(ctx: ServiceContext) -> None:
    await runtime.stop(ctx)


def create_app(settings: IngestGpSettings | None = None, bus: Bus | None = None) -> FastAPI:
    spec = ServiceSpec(
        name=NAME,
        description=(
            "Provider systems push FHIR R4 Bundles (JSON or XML), bulk NDJSON imports "
            "($import) and CSV extracts here; they reach every service."
        ),
        router=router,
        schema=SCHEMA,
        migrations=Path(__file__).parent / "migrations",
        on_start=_start,
        on_stop=_stop,
    )
    return create_service_app(spec, settings or IngestGpSettings(), bus)
