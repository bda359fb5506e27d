"""ingest-acute: hospitals' HL7 v2 ADT feeds into FHIR resources on Kafka."""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI

from fhir_common.bus import Bus
from fhir_common.service import ServiceContext, ServiceSpec, create_service_app
from ingest_acute import consumer
from ingest_acute.routes import router
from ingest_acute.settings import IngestAcuteSettings
from ingest_acute.tables import SCHEMA

NAME = "ingest-acute"


async def _start(ctx: ServiceContext) -> None:
    consumer.register(ctx)


def create_app(settings: IngestAcuteSettings | None = None, bus: Bus | None = None) -> FastAPI:
    spec = ServiceSpec(
        name=NAME,
        description="Hospitals send HL7 v2 ADT over MLLP or HTTP; it becomes FHIR on Kafka.",
        router=router,
        schema=SCHEMA,
        migrations=Path(__file__).parent / "migrations",
        on_start=_start,
    )
    return create_service_app(spec, settings or IngestAcuteSettings(), bus)
