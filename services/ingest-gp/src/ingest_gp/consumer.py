"""ingest-gp's consumers: its directory of patients already seen (from ``fhir.Patient``)."""

from fhir_common.patient_directory import subscribe_directory
from fhir_common.service import ServiceContext
from ingest_gp.tables import patient_keys


def register(ctx: ServiceContext) -> None:
    subscribe_directory(ctx, patient_keys)
