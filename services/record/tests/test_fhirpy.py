"""The record's FHIR API driven by an independent FHIR client, fhirpy (AsyncFHIRClient, over
aiohttp), against the record served by uvicorn on a free port: what an EHR integrating with
JoinedUp would do. Nothing of ours is used on the client side."""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from fhirpy import AsyncFHIRClient
from fhirpy.base.exceptions import (
    AuthorizationError,
    ForbiddenError,
    MultipleResourcesFound,
    OperationOutcome,
    ResourceNotFound,
)

from fhir_common.bus import InProcessBus
from fhir_common.events import event_headers, fhir_message
from fhir_common.identifiers import NHS_NUMBER_SYSTEM
from fhir_common.net import free_port
from record.main import create_app
from record.settings import RecordSettings

N1, N2 = "9434765919", "9912003888"
LOINC = "http://loinc.org"


def resources() -> list[tuple[dict[str, Any], str]]:
    def patient(pid: str, family: str, nhs: str, born: str) -> dict[str, Any]:
        return {
            "resourceType": "Patient",
            "id": pid,
            "identifier": [{"system": NHS_NUMBER_SYSTEM, "value": nhs}],
            "name": [{"family": family, "given": ["Ann"]}],
            "birthDate": born,
        }

    found: list[tuple[dict[str, Any], str]] = [
        (patient("p1", "Ashworth", N1, "1950-02-01"), N1),
        (patient("p2", "Ashton", N2, "1990-07-01"), N2),
    ]
    for n in range(7):
        found.append(
            (
                {
                    "resourceType": "Observation",
                    "id": f"hba1c-{n}",
                    "status": "final",
                    "subject": {"reference": "Patient/p1"},
                    "code": {"coding": [{"system": LOINC, "code": "4548-4"}]},
                    "effectiveDateTime": f"2024-0{n + 1}-15",
                    "valueQuantity": {"value": 6.0 + n / 2, "unit": "%"},
                },
                N1,
            )
        )
    found.append(
        (
            {
                "resourceType": "Encounter",
                "id": "ed",
                "status": "finished",
                "class": {"code": "EMER"},
                "subject": {"reference": "Patient/p1"},
            },
            N1,
        )
    )
    return found


@pytest.fixture
async def server(tmp_path: Path, keys: Any) -> AsyncIterator[str]:
    settings = RecordSettings(
        data_dir=tmp_path, database_url=f"sqlite+aiosqlite:///{tmp_path / 'joinedup.db'}"
    )
    settings.signing_key_file().parent.mkdir(parents=True)
    shutil.copy(keys.file, settings.signing_key_file())
    bus = InProcessBus()
    app = create_app(settings, bus=bus)
    port = free_port()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on")
    served = uvicorn.Server(config)
    task = asyncio.create_task(served.serve())
    try:
        for _ in range(1000):  # 20 s
            if served.started or task.done():
                break
            await asyncio.sleep(0.02)
        assert served.started, "the record did not start (its port taken?)"
        await bus.start()
        await bus.publish(
            [
                fhir_message(r, key, event_headers(source="gp-a", setting="primary"))
                for r, key in resources()
            ]
        )
        async with asyncio.timeout(20):
            await bus.wait_idle()
        yield f"http://127.0.0.1:{port}/fhir"
    finally:
        await bus.stop()
        served.should_exit = True
        await task


@pytest.fixture
def client(server: str, keys: Any) -> AsyncFHIRClient:
    return AsyncFHIRClient(server, authorization=f"Bearer {keys.reader}")


async def test_read_and_search(client: AsyncFHIRClient) -> None:
    patient = await client.get("Patient", "p1")
    assert patient["name"][0]["family"] == "Ashworth"
    found = await client.resources("Patient").search(identifier=f"{NHS_NUMBER_SYSTEM}|{N2}").fetch()
    assert [p["id"] for p in found] == ["p2"]
    by_name = await client.resources("Patient").search(family="ash").sort("family").fetch()
    assert [p["id"] for p in by_name] == ["p2", "p1"]
    older = await client.resources("Patient").search(birthdate__lt="1960").fetch()
    assert [p["id"] for p in older] == ["p1"]
    exact = await client.resources("Patient").search(family__exact="Ashton").fetch()
    assert [p["id"] for p in exact] == ["p2"]
    patient_ref = client.reference("Patient", "p1")
    assert (await patient_ref.to_resource())["birthDate"] == "1950-02-01"


async def test_paging_sorting_counting(client: AsyncFHIRClient) -> None:
    search = client.resources("Observation").search(patient="p1", code=f"{LOINC}|4548-4")
    everything = await search.sort("-date").limit(3).fetch_all()  # follows the next links
    assert [o["id"] for o in everything] == [f"hba1c-{n}" for n in range(6, -1, -1)]
    first_page = await search.sort("-date").limit(3).fetch()
    assert len(first_page) == 3
    assert await search.count() == 7
    high = await client.resources("Observation").search(value_quantity__ge="8").fetch_all()
    assert sorted(o["id"] for o in high) == ["hba1c-4", "hba1c-5", "hba1c-6"]
    latest = await search.sort("-date").first()
    assert latest is not None
    assert latest["id"] == "hba1c-6"
    with pytest.raises(MultipleResourcesFound):
        await search.get()
    one = await client.resources("Patient").search(_id="p2").get()
    assert one["id"] == "p2"


async def test_include_and_revinclude(client: AsyncFHIRClient) -> None:
    raw = await (
        client.resources("Encounter").search(_id="ed").include("Encounter", "subject").fetch_raw()
    )
    kinds = sorted((e.search.mode, e.resource.resourceType) for e in raw.entry)
    assert kinds == [("include", "Patient"), ("match", "Encounter")]
    rev = await (
        client.resources("Patient").search(_id="p1").revinclude("Encounter", "patient").fetch_raw()
    )
    assert sorted(e.resource.id for e in rev.entry) == ["ed", "p1"]


async def test_everything_and_history(client: AsyncFHIRClient) -> None:
    patient = await client.resources("Patient").search(_id="p1").get()
    everything = await patient.execute("$everything", method="get")
    assert everything["resourceType"] == "Bundle"
    assert everything["total"] == 9  # the Patient, 7 Observations, the Encounter
    history = await client.execute("Patient/p1/_history", method="get")
    assert history["type"] == "history"
    version = await client.execute("Patient/p1/_history/1", method="get")
    assert version["meta"]["versionId"] == "1"
    await patient.refresh()  # a conditional read: If-None-Match answered 304
    assert patient["id"] == "p1"


async def test_errors_reach_the_client_as_operation_outcomes(server: str, keys: Any) -> None:
    client = AsyncFHIRClient(server, authorization=f"Bearer {keys.reader}")
    with pytest.raises(ResourceNotFound):
        await client.get("Patient", "nobody")
    with pytest.raises(OperationOutcome) as bad:
        await client.resources("Patient").search(birthdate="whenever").fetch()
    assert "birthdate" in str(bad.value)
    with pytest.raises(AuthorizationError):
        await AsyncFHIRClient(server).get("Patient", "p1")
    limited = AsyncFHIRClient(server, authorization=f"Bearer {keys.observations_only}")
    with pytest.raises(ForbiddenError):
        await limited.get("Patient", "p1")
    strict = AsyncFHIRClient(
        server,
        authorization=f"Bearer {keys.reader}",
        extra_headers={"Prefer": "handling=strict"},
    )
    with pytest.raises(OperationOutcome):
        await strict.resources("Patient").search(colour="blue").fetch()
    metadata = await AsyncFHIRClient(server).execute("metadata", method="get")
    assert metadata["resourceType"] == "CapabilityStatement"
