"""The bus: one interface (``Bus``), Kafka for distributed mode, in-process for embedded mode."""

from fhir_common.bus.base import BatchHandler, Bus, PermanentError, Subscription, is_permanent
from fhir_common.bus.kafka import KafkaBus
from fhir_common.bus.memory import InProcessBus
from fhir_common.settings import Settings

__all__ = [
    "BatchHandler",
    "Bus",
    "InProcessBus",
    "KafkaBus",
    "PermanentError",
    "Subscription",
    "create_bus",
    "is_permanent",
]


def create_bus(settings: Settings, client_id: str) -> Bus:
    if settings.embedded and not settings.kafka_bootstrap:
        return InProcessBus()
    if not settings.kafka_bootstrap:
        raise ValueError("JOINEDUP_KAFKA_BOOTSTRAP is required in distributed mode")
    return KafkaBus(
        settings.kafka_bootstrap,
        client_id=client_id,
        partitions=settings.kafka_partitions,
        group_prefix=settings.kafka_group_prefix,
        instance_id=settings.instance_id,
    )
