"""ingest-gp's consumer: its directory of patients already seen, from ``fhir.Patient``.

For every Patient published by any feed (ingest-gp's own pushes, ingest-acute, ...): its key
(``patient_keys``, so that later resources about it are keyed with it) and its identifiers (the
index behind ``Patient?identifier=...``). Both are also written when ingest-gp itself publishes
(``publishing.remember``); this consumer adds the patients other services publish.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import orjson

from fhir_common.bus import PermanentError
from fhir_common.events import Header, Message, fhir_topic
from fhir_common.patient_directory import remember_keys
from fhir_common.service import ServiceContext
from ingest_gp.publishing import identifier_rows, remember_identifiers
from ingest_gp.tables import patient_keys


def register(ctx: ServiceContext) -> None:
    assert ctx.db is not None
    db = ctx.db

    async def remember(messages: Sequence[Message]) -> None:
        keys: dict[str, str] = {}
        rows: list[dict[str, Any]] = []
        for message in messages:
            patient = orjson.loads(message.value)
            if not isinstance(patient, dict) or not patient.get("id"):
                raise PermanentError("fhir.Patient message without a Patient id")
            keys[f"Patient/{patient['id']}"] = message.key
            feed = message.headers.get(Header.SOURCE, "")
            rows += identifier_rows(patient, feed, message.key)
        async with db.transaction() as session:
            await remember_keys(session, patient_keys, keys)
            await remember_identifiers(session, rows)

    ctx.bus.subscribe(
        f"{ctx.name}.patients", remember, service=ctx.name, topics=[fhir_topic("Patient")]
    )
