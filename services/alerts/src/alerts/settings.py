from fhir_common.settings import Settings


class AlertsSettings(Settings):
    """The alerts service's own knobs, on top of the shared settings (same ``JOINEDUP_`` prefix)."""
