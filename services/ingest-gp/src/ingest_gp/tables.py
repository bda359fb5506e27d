"""ingest-gp's tables (schema ``ingest_gp``)."""

from sqlalchemy import MetaData

from fhir_common.patient_directory import directory_table

SCHEMA = "ingest_gp"
metadata = MetaData(schema=SCHEMA)

# patients already seen, so later resources about them get their key (see patient_directory)
patient_keys = directory_table(metadata)
