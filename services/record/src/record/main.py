"""The record service: the longitudinal record in PostgreSQL with a FHIR REST API."""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI

from fhir_common.bus import Bus
from fhir_common.service import ServiceContext, ServiceSpec, create_service_app
from record import consumer
from record.routes import router
from record.settings import RecordSettings
from record.tables import SCHEMA

NAME = "record"
MIGRATIONS = Path(__file__).parent / "migrations"


def create_app(settings: RecordSettings | None = None, bus: Bus | None = None) -> FastAPI:
    settings = settings or RecordSettings()

    async def on_start(ctx: ServiceContext) -> None:
        consumer.register(ctx, max_batch=settings.record_consumer_batch)

    spec = ServiceSpec(
        name=NAME,
        description="Every provider's data about one person, together, over FHIR R4.",
        router=router,
        schema=SCHEMA,
        migrations=MIGRATIONS,
        on_start=on_start,
    )
    return create_service_app(spec, settings, bus)
