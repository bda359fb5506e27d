"""Pushing Bundles to ingest-gp over HTTP: transaction, batch and collection semantics, scopes,
content types, and what reaches the ``fhir.<Type>`` topics (ingest_gp.bundles, ingest_gp.routes).

The real app runs on a real in-process bus and its own SQLite database; only the HTTP transport
is in-process.
"""

from __future__ import annotations

import asyncio
import copy
import json
import shutil
from collections import Counter
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from asgi_lifespan import LifespanManager

from fhir_common.auth import LocalSigner
from fhir_common.bus import InProcessBus
from fhir_common.events import DEADLETTER, FHIR_TOPIC_PATTERN, Header, Message
from fhir_common.feeds import Feed, FeedKind, FeedRegistry
from fhir_common.identifiers import NHS_NUMBER_SYSTEM, resource_id
from ingest_gp.main import create_app
from ingest_gp.settings import IngestGpSettings
from joinedup.tokens import feed_token

SAMPLES = Path(__file__).resolve().parents[4] / "shared" / "samples"
CORE = SAMPLES / "fhir-r4-core-examples"
SYNTHEA = SAMPLES / "synthea-r4" / "Buster_Hoeger_ad2e3fc5-2b5d-4cb9-8d03-9ea0f4ac8423.json"

FEED = Feed(id="gp-test", kind=FeedKind.FHIR, ods="Y01234", setting="primary")
NHS_NUMBER = "9434765919"
FHIR_JSON = "application/fhir+json"


def sample(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((CORE / name).read_text())
    return data


class Keys:
    """One signing key for the whole module (loading an RSA key costs ~0.1 s), and the feed's
    push token as ``joinedup.tokens.feed_token`` mints it."""

    def __init__(self, data_dir: Path) -> None:
        self.feed_token = feed_token(data_dir, FEED)
        self.file = IngestGpSettings(data_dir=data_dir).signing_key_file()
        self.signer = LocalSigner.load_or_create(self.file)


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Keys:
    return Keys(tmp_path_factory.mktemp("keys"))


class Ingest:
    """The running ingest-gp app, a client for it, and what it published."""

    def __init__(
        self,
        client: httpx.AsyncClient,
        bus: InProcessBus,
        settings: IngestGpSettings,
        keys: Keys,
    ) -> None:
        self.client = client
        self.bus = bus
        self.settings = settings
        self.keys = keys
        self.published: list[Message] = []
        self.dead: list[Message] = []

    def token(self, scopes: list[str] | None = None) -> str:
        """The feed's token, or one for the same feed with other scopes."""
        if scopes is None:
            return self.keys.feed_token
        return self.keys.signer.mint(
            subject=f"feed:{FEED.id}",
            scopes=scopes,
            issuer=self.settings.auth_issuer,
            audience=self.settings.auth_audience,
            feed=FEED.id,
        )

    async def push(
        self,
        body: bytes | dict[str, Any],
        *,
        scopes: list[str] | None = None,
        content_type: str | None = FHIR_JSON,
    ) -> httpx.Response:
        headers = {"Authorization": f"Bearer {self.token(scopes)}"}
        if content_type is not None:
            headers["Content-Type"] = content_type
        content = body if isinstance(body, bytes) else orjson.dumps(body)
        response = await self.client.post("/fhir", content=content, headers=headers)
        async with asyncio.timeout(10):
            await self.bus.wait_idle()
        return response

    def resources(self, resource_type: str | None = None) -> list[dict[str, Any]]:
        return [
            orjson.loads(m.value)
            for m in self.published
            if resource_type is None or m.topic == f"fhir.{resource_type}"
        ]


@pytest.fixture
async def ingest(tmp_path: Path, keys: Keys) -> AsyncIterator[Ingest]:
    settings = IngestGpSettings(
        data_dir=tmp_path,
        database_url=f"sqlite+aiosqlite:///{tmp_path / 'joinedup.db'}",
        feeds_file=tmp_path / "feeds.json",
        ingest_gp_workers=0,  # validate in this process: a pool costs seconds to start
    )
    settings.signing_key_file().parent.mkdir(parents=True)
    shutil.copy(keys.file, settings.signing_key_file())
    FeedRegistry(settings.resolved_feeds_file()).add(FEED)
    bus = InProcessBus()
    app = create_app(settings, bus=bus)
    async with LifespanManager(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://ingest") as client:
            ingest = Ingest(client, bus, settings, keys)

            def collect(into: list[Message]) -> Any:
                async def handler(messages: Sequence[Message]) -> None:
                    into.extend(messages)

                return handler

            bus.subscribe(
                "t-fhir", collect(ingest.published), service="t", pattern=FHIR_TOPIC_PATTERN
            )
            bus.subscribe("t-dead", collect(ingest.dead), service="t", topics=[DEADLETTER])
            await bus.start()
            try:
                yield ingest
            finally:
                await bus.stop()


def entry(resource: dict[str, Any], method: str | None = "POST") -> dict[str, Any]:
    out: dict[str, Any] = {"fullUrl": f"urn:uuid:{resource['resourceType']}-{resource['id']}"}
    out["resource"] = resource
    if method is not None:
        out["request"] = {"method": method, "url": resource["resourceType"]}
    return out


def gp_bundle(bundle_type: str = "transaction") -> dict[str, Any]:
    """Official R4 examples: Patient/example (given an NHS number), Encounter/example and
    Observation/example, which refer to Patient/example and Encounter/example."""
    patient = sample("Patient-example.json")
    patient["identifier"].append({"system": NHS_NUMBER_SYSTEM, "value": NHS_NUMBER})
    method = None if bundle_type == "collection" else "POST"
    resources = (patient, sample("Encounter-example.json"), sample("Observation-example.json"))
    return {
        "resourceType": "Bundle",
        "type": bundle_type,
        "entry": [entry(r, method) for r in resources],
    }


def statuses(answer: dict[str, Any]) -> list[str]:
    return [e["response"]["status"] for e in answer["entry"]]


# --- a whole real record -------------------------------------------------------------------------


async def test_a_synthea_transaction_reaches_every_fhir_topic(ingest: Ingest) -> None:
    bundle = json.loads(SYNTHEA.read_text())
    sent = Counter(e["resource"]["resourceType"] for e in bundle["entry"])

    response = await ingest.push(bundle)

    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith(FHIR_JSON)
    answer = response.json()
    assert answer["type"] == "transaction-response"
    assert statuses(answer) == ["201 Created"] * len(bundle["entry"])
    assert Counter(m.topic for m in ingest.published) == {f"fhir.{t}": n for t, n in sent.items()}
    assert ingest.dead == []
    # each location names the resource as published, with its deterministic id
    locations = [e["response"]["location"] for e in answer["entry"]]
    published = {f"{r['resourceType']}/{r['id']}" for r in ingest.resources()}
    assert set(locations) == published
    first = bundle["entry"][0]["resource"]
    patient_id = resource_id(FEED.id, "Patient", first["id"])
    assert locations[0] == f"Patient/{patient_id}"

    # Synthea's patient has no NHS number: everything about them is keyed <feed>|<id>
    by_type: dict[str, set[str]] = {}
    for message in ingest.published:
        by_type.setdefault(message.topic, set()).add(message.key)
    for about_patient in ("Patient", "Encounter", "Observation", "Claim", "Immunization"):
        assert by_type[f"fhir.{about_patient}"] == {f"gp-test|{patient_id}"}, about_patient
    organization = ingest.resources("Organization")[0]
    assert by_type["fhir.Organization"] == {f"gp-test|Organization/{organization['id']}"}
    for message in ingest.published:
        assert message.headers[Header.SOURCE] == "gp-test"
        assert message.headers[Header.SETTING] == "primary"
        assert message.headers[Header.EVENT_ID]
        assert message.headers[Header.TRACEPARENT].startswith("00-")
    traces = {m.headers[Header.TRACEPARENT].split("-")[1] for m in ingest.published}
    assert len(traces) == 1  # one push, one trace
    observation = ingest.resources("Observation")[0]
    assert observation["subject"] == {"reference": f"Patient/{patient_id}"}


async def test_a_resent_bundle_gets_the_same_answer_and_publishes_nothing_new(
    ingest: Ingest,
) -> None:
    first = await ingest.push(gp_bundle())
    second = await ingest.push(gp_bundle())
    assert first.json() == second.json()
    assert len(ingest.published) == 3
    assert (first.headers["X-Published"], first.headers["X-Unchanged"]) == ("3", "0")
    assert (second.headers["X-Published"], second.headers["X-Unchanged"]) == ("0", "3")


async def test_a_changed_resource_is_published_once(ingest: Ingest) -> None:
    await ingest.push(gp_bundle())
    changed = gp_bundle()
    changed["entry"][2]["resource"]["status"] = "amended"
    for _ in range(2):
        response = await ingest.push(changed)
        assert response.status_code == 200, response.text
    topics = Counter(m.topic for m in ingest.published)
    assert topics == {"fhir.Patient": 1, "fhir.Encounter": 1, "fhir.Observation": 2}
    observations = ingest.resources("Observation")
    assert [o["status"] for o in observations] == ["final", "amended"]


async def test_resources_are_keyed_by_their_patients_nhs_number(ingest: Ingest) -> None:
    response = await ingest.push(gp_bundle())
    assert response.status_code == 200, response.text
    assert {m.key for m in ingest.published} == {NHS_NUMBER}
    patient = ingest.resources("Patient")[0]
    encounter = ingest.resources("Encounter")[0]
    observation = ingest.resources("Observation")[0]
    assert observation["subject"] == {"reference": f"Patient/{patient['id']}"}
    assert observation["encounter"] == {"reference": f"Encounter/{encounter['id']}"}


async def test_a_patient_sent_earlier_gives_later_resources_its_key(ingest: Ingest) -> None:
    bundle = gp_bundle()
    patient_only = {**bundle, "entry": bundle["entry"][:1]}
    assert (await ingest.push(patient_only)).status_code == 200
    later = {**bundle, "entry": bundle["entry"][2:]}  # Observation about Patient/example
    response = await ingest.push(later)
    assert response.status_code == 200, response.text
    observation = next(m for m in ingest.published if m.topic == "fhir.Observation")
    assert observation.key == NHS_NUMBER
    patient_id = ingest.resources("Patient")[0]["id"]
    assert orjson.loads(observation.value)["subject"] == {"reference": f"Patient/{patient_id}"}


async def test_a_patient_never_seen_gives_feed_and_id_as_key(ingest: Ingest) -> None:
    bundle = gp_bundle()
    response = await ingest.push({**bundle, "entry": bundle["entry"][2:]})
    assert response.status_code == 200, response.text
    patient_id = resource_id(FEED.id, "Patient", "example")
    assert [m.key for m in ingest.published] == [f"gp-test|{patient_id}"]


async def test_nhs_numbers_written_with_spaces_are_accepted_and_canonicalised(
    ingest: Ingest,
) -> None:
    """GP systems display NHS numbers as ``943 476 5919``; ingest-gp canonicalises them
    (normalise.canonical_nhs_numbers, patients.own_key), so it must not refuse them first."""
    bundle = gp_bundle()
    bundle["entry"][0]["resource"]["identifier"][-1]["value"] = "943 476 5919"
    response = await ingest.push(bundle)
    assert response.status_code == 200, response.text
    patient = ingest.resources("Patient")[0]
    assert {"system": NHS_NUMBER_SYSTEM, "value": NHS_NUMBER} in patient["identifier"]
    assert {m.key for m in ingest.published} == {NHS_NUMBER}


# --- transaction: all or nothing -----------------------------------------------------------------


async def test_a_transaction_with_bad_entries_is_refused_whole(ingest: Ingest) -> None:
    bundle = gp_bundle()
    bundle["entry"][0]["resource"]["birthDate"] = "1974-13-45"
    del bundle["entry"][2]["resource"]["status"]
    response = await ingest.push(bundle)

    assert response.status_code == 422
    outcome = response.json()
    assert outcome["resourceType"] == "OperationOutcome"
    where = [e for i in outcome["issue"] for e in i.get("expression", [])]
    assert "Bundle.entry[0].resource.birthDate" in where
    assert "Bundle.entry[2].resource.status" in where
    assert not any(w.startswith("Bundle.entry[1]") for w in where)  # the good one
    assert ingest.published == []  # not even the valid Encounter
    assert [orjson.loads(m.value) for m in ingest.dead] == [bundle]


@pytest.mark.parametrize("method", ["DELETE", "GET", "PATCH", None])
async def test_unsupported_methods_are_refused_at_the_method(
    ingest: Ingest, method: str | None
) -> None:
    bundle = gp_bundle()
    if method is None:
        del bundle["entry"][1]["request"]
    else:
        bundle["entry"][1]["request"]["method"] = method
    response = await ingest.push(bundle)
    assert response.status_code == 422
    [issue] = response.json()["issue"]
    assert issue["code"] == "not-supported"
    assert issue["expression"] == ["Bundle.entry[1].request.method"]
    assert ingest.published == []


async def test_a_delete_entry_as_fhir_writes_it_is_refused_at_the_method(ingest: Ingest) -> None:
    """A DELETE entry has no resource (hl7.fhir.r4.examples Bundle-bundle-transaction); what
    is wrong with it is the method, not a missing resource."""
    official = sample("Bundle-bundle-transaction.json")
    delete = next(e for e in official["entry"] if e.get("request", {}).get("method") == "DELETE")
    assert "resource" not in delete
    bundle = gp_bundle()
    bundle["entry"].append(delete)
    response = await ingest.push(bundle)
    assert response.status_code == 422
    [issue] = response.json()["issue"]
    assert issue["expression"] == ["Bundle.entry[3].request.method"]
    assert issue["code"] == "not-supported"


async def test_a_token_that_may_not_create_patients_cannot_push_one(ingest: Ingest) -> None:
    response = await ingest.push(gp_bundle(), scopes=["system/Observation.c"])
    assert response.status_code == 403
    issues = response.json()["issue"]
    assert {i["code"] for i in issues} == {"forbidden"}
    assert [i["expression"] for i in issues] == [["Bundle.entry[0]"], ["Bundle.entry[1]"]]
    assert ingest.published == []


async def test_put_needs_the_update_permission(ingest: Ingest) -> None:
    bundle = gp_bundle()
    bundle["entry"] = bundle["entry"][2:]
    bundle["entry"][0]["request"] = {"method": "PUT", "url": "Observation/example"}
    refused = await ingest.push(bundle, scopes=["system/Observation.c"])
    assert refused.status_code == 403
    accepted = await ingest.push(bundle, scopes=["system/Observation.u"])
    assert accepted.status_code == 200, accepted.text
    assert statuses(accepted.json()) == ["200 OK"]


# --- batch: each entry on its own ----------------------------------------------------------------


async def test_a_batch_answers_for_each_entry(ingest: Ingest) -> None:
    bundle = gp_bundle("batch")
    bad_condition = sample("Condition-example.json")
    bad_condition["onsetDateTime"] = "not-a-date"
    bundle["entry"].insert(1, entry(bad_condition))
    bundle["entry"][3]["request"]["method"] = "DELETE"  # the Observation
    # entries: 0 Patient, 1 bad Condition, 2 Encounter, 3 Observation (DELETE)

    response = await ingest.push(bundle)

    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["type"] == "batch-response"
    assert statuses(answer) == ["201 Created", "422", "201 Created", "422"]
    condition_outcome = answer["entry"][1]["response"]["outcome"]
    assert condition_outcome["resourceType"] == "OperationOutcome"
    assert condition_outcome["issue"][0]["expression"] == ["Bundle.entry[1].resource.onsetDateTime"]
    delete_outcome = answer["entry"][3]["response"]["outcome"]
    assert delete_outcome["issue"][0]["expression"] == ["Bundle.entry[3].request.method"]
    assert sorted(m.topic for m in ingest.published) == ["fhir.Encounter", "fhir.Patient"]
    # each refused entry is kept, as sent, on the dead-letter topic
    assert [orjson.loads(m.value) for m in ingest.dead] == [bundle["entry"][1], bundle["entry"][3]]


async def test_a_batch_refuses_only_the_entries_the_token_may_not_push(ingest: Ingest) -> None:
    bundle = gp_bundle("batch")
    response = await ingest.push(bundle, scopes=["system/Observation.c"])
    assert response.status_code == 200, response.text
    answer = response.json()
    assert statuses(answer) == ["403", "403", "201 Created"]
    issue = answer["entry"][0]["response"]["outcome"]["issue"][0]
    assert issue["code"] == "forbidden"
    assert issue["expression"] == ["Bundle.entry[0]"]
    assert [m.topic for m in ingest.published] == ["fhir.Observation"]


# --- collection: every entry an update -----------------------------------------------------------


async def test_a_collection_is_taken_as_updates(ingest: Ingest) -> None:
    response = await ingest.push(gp_bundle("collection"))
    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["type"] == "batch-response"
    assert statuses(answer) == ["200 OK"] * 3
    assert sorted(m.topic for m in ingest.published) == [
        "fhir.Encounter",
        "fhir.Observation",
        "fhir.Patient",
    ]
    # updates need the update permission: a create-only token may not send a collection
    refused = await ingest.push(gp_bundle("collection"), scopes=["system/*.c"])
    assert refused.status_code == 403


async def test_the_official_references_collection_is_accepted(ingest: Ingest) -> None:
    bundle = sample("Bundle-bundle-references.json")
    response = await ingest.push(bundle)
    assert response.status_code == 200, response.text
    assert statuses(response.json()) == ["200 OK"] * len(bundle["entry"])
    assert len(ingest.published) == len(bundle["entry"])


async def test_a_collection_with_a_bad_entry_is_refused_whole(ingest: Ingest) -> None:
    bundle = gp_bundle("collection")
    bundle["entry"][1]["resource"]["status"] = {"not": "a code"}
    response = await ingest.push(bundle)
    assert response.status_code == 422
    assert any(
        e.startswith("Bundle.entry[1].resource.status")
        for i in response.json()["issue"]
        for e in i.get("expression", [])
    )
    assert ingest.published == []


# --- the HTTP edge -------------------------------------------------------------------------------


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded", None])
async def test_only_fhir_formats_are_taken(ingest: Ingest, content_type: str | None) -> None:
    response = await ingest.push(gp_bundle(), content_type=content_type)
    assert response.status_code == 415
    assert response.headers["content-type"].startswith(FHIR_JSON)
    [issue] = response.json()["issue"]
    assert issue["code"] == "not-supported"
    assert ingest.published == []


@pytest.mark.parametrize(
    "content_type", ["application/json", "application/fhir+json; charset=utf-8"]
)
async def test_json_media_types_with_parameters_are_taken(
    ingest: Ingest, content_type: str
) -> None:
    response = await ingest.push(gp_bundle(), content_type=content_type)
    assert response.status_code == 200, response.text


async def test_a_feed_of_another_kind_may_not_push_bundles(ingest: Ingest) -> None:
    hl7 = Feed(id="acute-x", kind=FeedKind.HL7V2, ods="RR8", setting="acute", sender="RR8")
    FeedRegistry(ingest.settings.resolved_feeds_file()).add(hl7)
    token = ingest.keys.signer.mint(
        subject="feed:acute-x",
        scopes=["system/*.cu"],
        issuer=ingest.settings.auth_issuer,
        audience=ingest.settings.auth_audience,
        feed=hl7.id,
    )
    response = await ingest.client.post(
        "/fhir",
        content=orjson.dumps(gp_bundle()),
        headers={"Authorization": f"Bearer {token}", "Content-Type": FHIR_JSON},
    )
    assert response.status_code == 403
    assert "hl7v2" in response.json()["issue"][0]["diagnostics"]


async def test_a_bundle_over_the_size_limit_is_refused(ingest: Ingest) -> None:
    ingest.settings.ingest_gp_max_bundle_bytes = 1000
    body = orjson.dumps(gp_bundle())
    assert len(body) > 1000
    response = await ingest.push(body)
    assert response.status_code == 413
    assert response.json()["issue"][0]["code"] == "too-costly"


async def test_bundle_entries_not_objects_are_refused(ingest: Ingest) -> None:
    bundle = copy.deepcopy(gp_bundle("batch"))
    bundle["entry"].append("not an entry")
    response = await ingest.push(bundle)
    assert response.status_code == 200
    assert statuses(response.json())[-1] == "422"
