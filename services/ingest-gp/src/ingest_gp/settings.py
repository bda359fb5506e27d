from fhir_common.settings import Settings


class IngestGpSettings(Settings):
    """ingest-gp's own knobs, on top of the shared settings (same ``JOINEDUP_`` prefix)."""

    ingest_gp_max_bundle_bytes: int = 50 * 1024 * 1024
