"""The record service: the longitudinal record in PostgreSQL with a FHIR REST API."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from fastapi import FastAPI

from fhir_common import gctuning
from fhir_common.bus import Bus, KafkaBus
from fhir_common.service import ServiceContext, ServiceSpec, create_service_app
from record import consumer, persons
from record.outbox import Relay
from record.positions import forget_positions_beyond_the_log
from record.reindex import ensure_index
from record.routes import router
from record.settings import RecordSettings
from record.tables import SCHEMA

NAME = "record"
MIGRATIONS = Path(__file__).parent / "migrations"


@dataclass
class Runtime:
    """What the running record holds beyond the shared context (``app.state.record``)."""

    relay: Relay | None = None


def create_app(settings: RecordSettings | None = None, bus: Bus | None = None) -> FastAPI:
    settings = settings or RecordSettings()
    runtime = Runtime()

    async def on_start(ctx: ServiceContext) -> None:
        assert ctx.db is not None
        db = ctx.db
        await ensure_index(db)
        if isinstance(ctx.bus, KafkaBus):
            await forget_positions_beyond_the_log(db, ctx.bus.bootstrap)

        async def merges_waiting() -> None:
            async with db.transaction() as session:
                await persons.resolve_pending(persons.Linker(session))

        runtime.relay = Relay(
            db,
            ctx.bus,
            grace=settings.record_outbox_grace_seconds,
            poll=settings.record_outbox_poll_seconds,
            chores=[merges_waiting],
        )
        runtime.relay.start()
        consumer.register(ctx, settings, runtime.relay)
        if settings.record_gc_threshold:
            gctuning.tune(settings.record_gc_threshold)

    async def on_stop(_: ServiceContext) -> None:
        if runtime.relay is not None:
            await runtime.relay.stop()

    spec = ServiceSpec(
        name=NAME,
        description="Every provider's data about one person, together, over FHIR R4.",
        router=router,
        schema=SCHEMA,
        migrations=MIGRATIONS,
        on_start=on_start,
        on_stop=on_stop,
    )
    app = create_service_app(spec, settings, bus)
    app.state.record = runtime
    return app
