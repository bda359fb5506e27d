"""What a running ingest-acute holds: its store, its intake and its MLLP listener.

Built with the app and started from the service's ``on_start`` (and stopped from ``on_stop``),
so the listener runs the same way in embedded mode, where one process mounts every service,
and under ``joinedup serve ingest-acute``.
"""

from __future__ import annotations

import logging

from fhir_common import gctuning
from fhir_common.bus import KafkaBus
from fhir_common.events import fhir_topic
from fhir_common.service import ServiceContext
from ingest_acute.intake import Intake
from ingest_acute.mllp import MllpListener
from ingest_acute.settings import IngestAcuteSettings
from ingest_acute.store import Store

log = logging.getLogger(__name__)

PUBLISHED_TYPES = ("Patient", "Encounter", "Condition", "AllergyIntolerance", "Observation")


class AcuteRuntime:
    def __init__(self, settings: IngestAcuteSettings) -> None:
        self.settings = settings
        self._intake: Intake | None = None
        self._store: Store | None = None
        self.listener: MllpListener | None = None

    @property
    def intake(self) -> Intake:
        if self._intake is None:
            raise RuntimeError("ingest-acute is not started")
        return self._intake

    @property
    def mllp_port(self) -> int | None:
        """The port the MLLP listener is bound to (the real one when configured as 0)."""
        return self.listener.port if self.listener else None

    async def start(self, ctx: ServiceContext) -> None:
        if ctx.db is None:
            raise RuntimeError("ingest-acute needs its database")
        # No consumer of fhir.Patient for the patient directory (as ingest-gp has): the only
        # Patients with our ids are the ones we publish, and we write their keys ourselves,
        # in the same unit of work as the rest of what a message establishes.
        if isinstance(ctx.bus, KafkaBus):
            # the first message of each kind must not wait on (or fail for) topic creation
            await ctx.bus.ensure_topics([fhir_topic(t) for t in PUBLISHED_TYPES])
        self._store = Store(ctx.db)
        self._intake = Intake(ctx, self.settings, self._store)
        if not self.settings.embedded:
            # This process is ingest-acute alone (embedded mode's is everyone's: left alone).
            # Parsing and mapping allocate many short-lived objects; with CPython's default
            # thresholds the collections they set off walked the FHIR models and validators
            # alive since start-up: 384 and 318 messages/s before, 404-637 after.
            gctuning.tune()
        if not self.settings.mllp_enabled:
            return
        listener = MllpListener(self._intake, self.settings)
        try:
            await listener.start()
        except OSError as error:
            if not self.settings.embedded:
                raise
            # One process runs everything in embedded mode: a busy port must not stop the
            # rest of the platform (HL7 v2 over HTTP still works).
            log.error(
                "MLLP listener could not start; HL7 v2 over MLLP is unavailable",
                extra={"port": self.settings.mllp_port, "error": repr(error)},
            )
            return
        self.listener = listener

    async def stop(self, ctx: ServiceContext) -> None:
        if self.listener is not None:
            await self.listener.stop()
            self.listener = None
        if self._store is not None:
            await self._store.close()
