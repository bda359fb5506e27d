"""The risk service.

Risk of emergency admission, scored as each event arrives (LightGBM), and population segments.
"""

from __future__ import annotations

from fastapi import FastAPI

from fhir_common.bus import Bus
from fhir_common.service import ServiceContext, ServiceSpec, create_service_app
from risk import consumer
from risk.routes import router
from risk.settings import RiskSettings

NAME = "risk"


async def _start(ctx: ServiceContext) -> None:
    consumer.register(ctx)


def create_app(settings: RiskSettings | None = None, bus: Bus | None = None) -> FastAPI:
    spec = ServiceSpec(
        name=NAME,
        description=(
            "Risk of emergency admission, scored as each event arrives (LightGBM), "
            "and population segments."
        ),
        router=router,
        on_start=_start,
    )
    return create_service_app(spec, settings or RiskSettings(), bus)
