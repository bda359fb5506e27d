"""The alerts service.

Windowed clinical rules that tell the responsible clinician what they must know.
"""

from __future__ import annotations

from fastapi import FastAPI

from alerts import consumer
from alerts.routes import router
from alerts.settings import AlertsSettings
from fhir_common.bus import Bus
from fhir_common.service import ServiceContext, ServiceSpec, create_service_app

NAME = "alerts"


async def _start(ctx: ServiceContext) -> None:
    consumer.register(ctx)


def create_app(settings: AlertsSettings | None = None, bus: Bus | None = None) -> FastAPI:
    spec = ServiceSpec(
        name=NAME,
        description=(
            "Windowed clinical rules that tell the responsible clinician what they must know."
        ),
        router=router,
        on_start=_start,
    )
    return create_service_app(spec, settings or AlertsSettings(), bus)
