from fhir_common.db import run_migrations_online
from ingest_gp.tables import metadata

run_migrations_online(metadata)
