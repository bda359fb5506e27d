from fhir_common.settings import Settings


class RiskSettings(Settings):
    """The risk service's own knobs, on top of the shared settings (same ``JOINEDUP_`` prefix)."""
