"""The six services: how to build each, its settings, and its port in distributed mode."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI

import alerts.main
import careplan.main
import ingest_acute.main
import ingest_gp.main
import record.main
import risk.main
from alerts.settings import AlertsSettings
from careplan.settings import CareplanSettings
from fhir_common.bus import Bus
from fhir_common.settings import Settings
from ingest_acute.settings import IngestAcuteSettings
from ingest_gp.settings import IngestGpSettings
from record.settings import RecordSettings
from risk.settings import RiskSettings


@dataclass(frozen=True)
class ServiceEntry:
    name: str
    create_app: Callable[..., FastAPI]
    settings: type[Settings]
    port: int  # its own port in distributed mode (docker-compose.yml uses the same)

    def build(self, bus: Bus | None = None, **overrides: Any) -> FastAPI:
        return self.create_app(self.settings(**overrides), bus)


SERVICES: dict[str, ServiceEntry] = {
    e.name: e
    for e in (
        ServiceEntry("ingest-gp", ingest_gp.main.create_app, IngestGpSettings, 8001),
        ServiceEntry("ingest-acute", ingest_acute.main.create_app, IngestAcuteSettings, 8002),
        ServiceEntry("record", record.main.create_app, RecordSettings, 8003),
        ServiceEntry("risk", risk.main.create_app, RiskSettings, 8004),
        ServiceEntry("careplan", careplan.main.create_app, CareplanSettings, 8005),
        ServiceEntry("alerts", alerts.main.create_app, AlertsSettings, 8006),
    )
}
