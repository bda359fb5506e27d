from fhir_common.db import run_migrations_online
from ingest_acute.tables import metadata

run_migrations_online(metadata)
