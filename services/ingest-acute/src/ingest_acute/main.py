"""ingest-acute: hospitals' HL7 v2 ADT feeds (MLLP and HTTP) into FHIR resources on Kafka."""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI

from fhir_common.bus import Bus
from fhir_common.service import ServiceSpec, create_service_app
from ingest_acute.routes import router
from ingest_acute.runtime import AcuteRuntime
from ingest_acute.settings import IngestAcuteSettings
from ingest_acute.tables import SCHEMA

NAME = "ingest-acute"


def create_app(settings: IngestAcuteSettings | None = None, bus: Bus | None = None) -> FastAPI:
    settings = settings or IngestAcuteSettings()
    runtime = AcuteRuntime(settings)
    spec = ServiceSpec(
        name=NAME,
        description="Hospitals send HL7 v2 ADT over MLLP or HTTP; it becomes FHIR on Kafka.",
        router=router,
        schema=SCHEMA,
        migrations=Path(__file__).parent / "migrations",
        on_start=runtime.start,
        on_stop=runtime.stop,
    )
    app = create_service_app(spec, settings, bus)
    app.state.acute = runtime  # tests and the embedding process find the MLLP port here
    return app
