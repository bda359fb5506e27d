"""The careplan service.

Care plans, tasks and work lists shared across settings, and MDG review lists.
"""

from __future__ import annotations

from fastapi import FastAPI

from careplan import consumer
from careplan.routes import router
from careplan.settings import CareplanSettings
from fhir_common.bus import Bus
from fhir_common.service import ServiceContext, ServiceSpec, create_service_app

NAME = "careplan"


async def _start(ctx: ServiceContext) -> None:
    consumer.register(ctx)


def create_app(settings: CareplanSettings | None = None, bus: Bus | None = None) -> FastAPI:
    spec = ServiceSpec(
        name=NAME,
        description=(
            "Care plans, tasks and work lists shared across settings, and MDG review lists."
        ),
        router=router,
        on_start=_start,
    )
    return create_service_app(spec, settings or CareplanSettings(), bus)
