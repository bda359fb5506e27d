"""ingest-acute's tables (schema ``ingest_acute``)."""

from sqlalchemy import MetaData

from fhir_common.patient_directory import directory_table

SCHEMA = "ingest_acute"
metadata = MetaData(schema=SCHEMA)

# patients already seen, so later messages about them get their key (see patient_directory)
patient_keys = directory_table(metadata)
