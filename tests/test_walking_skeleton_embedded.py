"""The walking skeleton in embedded mode: one process, in-process bus, SQLite.

A transaction Bundle pushed to ingest-gp reaches the record through the bus and comes back
from the record's FHIR API; a resend changes nothing; bad input is refused with an
OperationOutcome, kept on the dead-letter topic, and nothing of it reaches the record.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from asgi_lifespan import LifespanManager

from fhir_common.bus import InProcessBus
from fhir_common.events import DEADLETTER, RECORD_CHANGES, Message
from fhir_common.feeds import Feed, FeedKind, FeedRegistry
from fhir_common.identifiers import NHS_NUMBER_SYSTEM
from fhir_common.observability import trace_id
from fhir_common.settings import Settings
from joinedup.embedded import create_embedded_app
from joinedup.tokens import feed_token, user_token

FEED = Feed(id="gp-test", kind=FeedKind.FHIR, ods="Y01234", setting="primary")


class Platform:
    def __init__(self, client: httpx.AsyncClient, bus: InProcessBus, data_dir: Path) -> None:
        self.client = client
        self.bus = bus
        self.feed_headers = {
            "Authorization": f"Bearer {feed_token(data_dir, FEED)}",
            "Content-Type": "application/fhir+json",
        }
        self.reader = {"Authorization": f"Bearer {user_token(data_dir)}"}
        self.dead: list[Message] = []
        self.changes: list[Message] = []

    async def push(self, body: bytes | dict[str, Any]) -> httpx.Response:
        content = body if isinstance(body, bytes) else orjson.dumps(body)
        response = await self.client.post(
            "/ingest-gp/fhir", content=content, headers=self.feed_headers
        )
        async with asyncio.timeout(10):
            await self.bus.wait_idle()
        return response

    async def read(self, path: str) -> httpx.Response:
        return await self.client.get(f"/record/fhir/{path}", headers=self.reader)


@pytest.fixture
async def platform(tmp_path: Path) -> AsyncIterator[Platform]:
    FeedRegistry(Settings(data_dir=tmp_path).resolved_feeds_file()).add(FEED)
    app = create_embedded_app(tmp_path)
    async with LifespanManager(app, startup_timeout=60, shutdown_timeout=60):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            bus: InProcessBus = app.state.bus
            platform = Platform(client, bus, tmp_path)

            async def collect(into: list[Message]) -> Any:
                async def handler(messages: Sequence[Message]) -> None:
                    into.extend(messages)

                return handler

            bus.subscribe("t-dead", await collect(platform.dead), service="t", topics=[DEADLETTER])
            bus.subscribe(
                "t-changes", await collect(platform.changes), service="t", topics=[RECORD_CHANGES]
            )
            yield platform


def _patient_id(transaction_response: dict[str, Any]) -> str:
    location: str = transaction_response["entry"][0]["response"]["location"]
    assert location.startswith("Patient/")
    return location.removeprefix("Patient/")


async def test_bundle_reaches_the_record(platform: Platform, bundle: dict, nhs_number: str) -> None:
    response = await platform.push(bundle)
    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["type"] == "transaction-response"
    assert [e["response"]["status"] for e in answer["entry"]] == ["201 Created"] * 3
    patient_id = _patient_id(answer)

    patient = (await platform.read(f"Patient/{patient_id}")).json()
    assert patient["resourceType"] == "Patient"
    assert {"system": NHS_NUMBER_SYSTEM, "value": nhs_number} in patient["identifier"]
    assert patient["meta"]["versionId"] == "1"
    assert patient["meta"]["source"].endswith("/gp-test")

    found = (await platform.read(f"Patient?identifier={NHS_NUMBER_SYSTEM}|{nhs_number}")).json()
    assert [e["resource"]["id"] for e in found["entry"]] == [patient_id]

    everything = (await platform.read(f"Patient/{patient_id}/$everything")).json()
    types = sorted(e["resource"]["resourceType"] for e in everything["entry"])
    assert types == ["Condition", "Encounter", "Patient"]
    encounter = next(
        e["resource"]
        for e in everything["entry"]
        if e["resource"]["id"] != patient_id and e["resource"]["resourceType"] == "Encounter"
    )
    assert encounter["subject"] == {"reference": f"Patient/{patient_id}"}


async def test_resending_the_same_bundle_creates_nothing(platform: Platform, bundle: dict) -> None:
    first = await platform.push(bundle)
    changes_after_first = len(platform.changes)
    second = await platform.push(bundle)
    assert second.status_code == 200
    assert first.json() == second.json()  # same deterministic ids
    assert changes_after_first == 3
    assert len(platform.changes) == changes_after_first  # no new version anywhere
    patient = (await platform.read(f"Patient/{_patient_id(second.json())}")).json()
    assert patient["meta"]["versionId"] == "1"


async def test_a_changed_resource_gets_a_new_version(platform: Platform, bundle: dict) -> None:
    patient_id = _patient_id((await platform.push(bundle)).json())
    bundle["entry"][0]["resource"]["gender"] = "female"
    await platform.push(bundle)
    patient = (await platform.read(f"Patient/{patient_id}")).json()
    assert (patient["meta"]["versionId"], patient["gender"]) == ("2", "female")
    assert [orjson.loads(m.value)["change"] for m in platform.changes] == [
        "created",
        "created",
        "created",
        "updated",
    ]


@pytest.mark.parametrize(
    ("body", "status", "code", "where"),
    [
        (b'{"resourceType": "Bundle", "type": ', 400, "structure", None),
        (b'{"resourceType": "Patient", "id": "x"}', 400, "invalid", "Bundle"),
        (b'{"resourceType": "Bundle", "type": "document"}', 400, "not-supported", "Bundle.type"),
    ],
)
async def test_malformed_pushes_are_refused_and_kept(
    platform: Platform, body: bytes, status: int, code: str, where: str | None
) -> None:
    response = await platform.push(body)
    assert response.status_code == status
    assert response.headers["content-type"].startswith("application/fhir+json")
    issue = response.json()["issue"][0]
    assert issue["code"] == code
    if where:
        assert issue["expression"] == [where]
    assert [m.value for m in platform.dead] == [body]
    assert platform.dead[0].headers["service"] == "ingest-gp"
    assert platform.dead[0].headers["source"] == "gp-test"


async def test_invalid_resource_rejects_the_whole_transaction(
    platform: Platform, bundle: dict, bundles: Any, nhs_number: str
) -> None:
    broken = bundles.with_bad_birth_date(bundle)
    response = await platform.push(broken)
    assert response.status_code == 422
    issues = response.json()["issue"]
    assert any(i["expression"] == ["Bundle.entry[0].resource.birthDate"] for i in issues), issues
    assert orjson.loads(platform.dead[0].value) == broken
    assert platform.changes == []  # nothing partial: not even the valid Encounter/Condition
    found = (await platform.read(f"Patient?identifier={NHS_NUMBER_SYSTEM}|{nhs_number}")).json()
    assert found["total"] == 0


async def test_invalid_nhs_number_is_refused(
    platform: Platform, bundle: dict, bundles: Any
) -> None:
    response = await platform.push(bundles.with_nhs_number(bundle, "9434765918"))
    assert response.status_code == 422
    issue = next(i for i in response.json()["issue"] if "9434765918" in i["diagnostics"])
    assert issue["expression"][0].startswith("Bundle.entry[0].resource.identifier[")
    assert len(platform.dead) == 1
    assert platform.changes == []


async def test_no_patient_data_without_a_valid_token(
    platform: Platform, bundle: dict, tmp_path: Path
) -> None:
    data_dir = tmp_path
    patient_id = _patient_id((await platform.push(bundle)).json())
    for headers in ({}, {"Authorization": "Bearer not-a-jwt"}):
        response = await platform.client.get(
            f"/record/fhir/Patient/{patient_id}/$everything", headers=headers
        )
        assert response.status_code == 401
        assert response.json()["resourceType"] == "OperationOutcome"
    # a reader may not push, nor may a feed that is not registered
    unregistered = Feed(id="gp-unknown", kind=FeedKind.FHIR, ods="Y09999", setting="primary")
    for token in (platform.reader["Authorization"], f"Bearer {feed_token(data_dir, unregistered)}"):
        refused = await platform.client.post(
            "/ingest-gp/fhir",
            content=orjson.dumps(bundle),
            headers={"Authorization": token, "Content-Type": "application/fhir+json"},
        )
        assert refused.status_code == 403
        assert refused.json()["issue"][0]["code"] == "forbidden"


async def test_trace_context_follows_the_push_to_record_changes(
    platform: Platform, bundle: dict
) -> None:
    trace = "4bf92f3577b34da6a3ce929d0e0e4736"
    traceparent = f"00-{trace}-00f067aa0ba902b7-01"
    response = await platform.client.post(
        "/ingest-gp/fhir",
        content=orjson.dumps(bundle),
        headers={**platform.feed_headers, "traceparent": traceparent},
    )
    async with asyncio.timeout(10):
        await platform.bus.wait_idle()
    assert trace_id(response.headers["traceparent"]) == trace
    assert len(platform.changes) == 3
    for change in platform.changes:
        # the same trace, each hop in a span of its own
        assert trace_id(change.headers["traceparent"]) == trace
        assert change.headers["traceparent"] != traceparent
