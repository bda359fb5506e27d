from fhir_common.settings import Settings


class RecordSettings(Settings):
    """The record's own knobs, on top of the shared settings (same ``JOINEDUP_`` prefix)."""

    record_default_count: int = 100
    record_max_count: int = 1000
    record_consumer_batch: int = 500
