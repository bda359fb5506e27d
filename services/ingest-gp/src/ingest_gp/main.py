"""ingest-gp: FHIR bundles (and, later, bulk NDJSON and CSV extracts) from GP, community and
social-care systems, into FHIR resources on ``fhir.<ResourceType>`` topics."""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI

from fhir_common.bus import Bus
from fhir_common.service import ServiceContext, ServiceSpec, create_service_app
from ingest_gp import consumer
from ingest_gp.routes import router
from ingest_gp.settings import IngestGpSettings
from ingest_gp.tables import SCHEMA

NAME = "ingest-gp"


async def _start(ctx: ServiceContext) -> None:
    consumer.register(ctx)


def create_app(settings: IngestGpSettings | None = None, bus: Bus | None = None) -> FastAPI:
    spec = ServiceSpec(
        name=NAME,
        description="Provider systems push FHIR R4 Bundles here; they reach every service.",
        router=router,
        schema=SCHEMA,
        migrations=Path(__file__).parent / "migrations",
        on_start=_start,
    )
    return create_service_app(spec, settings or IngestGpSettings(), bus)
