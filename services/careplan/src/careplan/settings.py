from fhir_common.settings import Settings


class CareplanSettings(Settings):
    """The careplan service's own knobs, on top of the shared settings (``JOINEDUP_``)."""
