from fhir_common.settings import Settings


class IngestAcuteSettings(Settings):
    """ingest-acute's own knobs, on top of the shared settings (same ``JOINEDUP_`` prefix)."""

    mllp_host: str = "0.0.0.0"
    mllp_port: int = 2575
