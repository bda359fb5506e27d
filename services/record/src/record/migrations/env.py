from fhir_common.db import run_migrations_online
from record.tables import metadata

run_migrations_online(metadata)
