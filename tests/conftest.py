"""Fixtures of the cross-service end-to-end tests."""

from __future__ import annotations

import asyncio
import copy
import functools
import json
import random
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from fhir_common.identifiers import NHS_NUMBER_SYSTEM, nhs_check_digit

SAMPLES = Path(__file__).resolve().parents[2] / "shared" / "samples"
CORE_EXAMPLES = SAMPLES / "fhir-r4-core-examples"


def random_nhs_number() -> str:
    """A valid NHS number in the 999 range (reserved for test data), new for every test run."""
    rng = random.Random()
    while True:
        first_nine = f"999{rng.randrange(10**6):06d}"
        check = nhs_check_digit(first_nine)
        if check is not None:
            return f"{first_nine}{check}"


def _sample(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((CORE_EXAMPLES / name).read_text())
    return data


def skeleton_bundle(nhs_number: str, local_id: str | None = None) -> dict[str, Any]:
    """A transaction Bundle made of the official R4 examples (Patient, Encounter, Condition),
    the patient given an NHS number and a fresh local id so each test run is its own."""
    local_id = local_id or f"pat-{uuid.uuid4().hex[:12]}"
    patient = _sample("Patient-example.json")
    patient["id"] = local_id
    patient["identifier"].append({"system": NHS_NUMBER_SYSTEM, "value": nhs_number})
    encounter = _sample("Encounter-example.json")
    condition = _sample("Condition-example.json")
    entries = []
    for resource in (patient, encounter, condition):
        if resource is not patient:
            resource["id"] = f"{resource['id']}-{local_id}"
            resource["subject"] = {"reference": f"urn:uuid:{local_id}"}
        entries.append(
            {
                "fullUrl": f"urn:uuid:{resource['id']}",
                "resource": resource,
                "request": {"method": "POST", "url": resource["resourceType"]},
            }
        )
    return {"resourceType": "Bundle", "type": "transaction", "entry": entries}


@pytest.fixture
def nhs_number() -> str:
    return random_nhs_number()


@pytest.fixture
def bundle(nhs_number: str) -> dict[str, Any]:
    return skeleton_bundle(nhs_number)


class Bundles:
    """Builds the bundles the end-to-end tests push (as a fixture: test modules can't import
    conftest under importlib mode)."""

    skeleton = staticmethod(skeleton_bundle)
    nhs_number = staticmethod(random_nhs_number)

    @staticmethod
    def with_bad_birth_date(bundle: dict[str, Any]) -> dict[str, Any]:
        broken = copy.deepcopy(bundle)
        broken["entry"][0]["resource"]["birthDate"] = "1974-13-45"
        return broken

    @staticmethod
    def with_nhs_number(bundle: dict[str, Any], value: str) -> dict[str, Any]:
        changed = copy.deepcopy(bundle)
        changed["entry"][0]["resource"]["identifier"][-1]["value"] = value
        return changed


@pytest.fixture
def bundles() -> type[Bundles]:
    return Bundles


@pytest.fixture
async def fresh_database_url(database_url: str) -> AsyncIterator[str]:
    """A database of its own on the real PostgreSQL server, dropped afterwards."""
    from fhir_common.scratch import scratch_database

    async with scratch_database(database_url, "jd_test") as url:
        yield url


# How far back before a test started ``read_topics`` looks: what a test reads it produced itself,
# and on a long-lived broker reading every earlier run's messages took minutes.
READ_BACK_SECONDS = 60.0


async def _read_topics(
    bootstrap: str,
    topics: list[str],
    wanted: Callable[[Any], bool],
    count: int,
    settle: float = 0.0,
    *,
    since: float = 0.0,
) -> list[Any]:
    """Read ``topics`` from the first record stamped at or after ``since`` (seconds since the
    epoch; 0: the start) until ``count`` records match (then ``settle`` seconds more, to see that
    no more arrive). Read committed, no consumer group, 60 s at most."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, isolation_level="read_committed", enable_auto_commit=False
    )
    await consumer.start()
    found: list[Any] = []
    try:
        async with asyncio.timeout(60):
            partitions: list[TopicPartition] = []
            for topic in topics:
                while not (numbers := consumer.partitions_for_topic(topic)):
                    await consumer._client.force_metadata_update()  # a topic made just now
                    await asyncio.sleep(0.2)
                partitions += [TopicPartition(topic, n) for n in sorted(numbers)]
            consumer.assign(partitions)
            starts = await consumer.offsets_for_times({tp: int(since * 1000) for tp in partitions})
            ends = await consumer.end_offsets(partitions)
            for tp in partitions:
                at = starts.get(tp)
                consumer.seek(tp, at.offset if at is not None else ends[tp])
            while len(found) < count:
                for records in (await consumer.getmany(timeout_ms=500)).values():
                    found += [r for r in records if wanted(r)]
        end = time.monotonic() + settle
        while time.monotonic() < end:
            for records in (await consumer.getmany(timeout_ms=500)).values():
                found += [r for r in records if wanted(r)]
    finally:
        await consumer.stop()
    return found


TopicReader = Callable[..., Awaitable[list[Any]]]


@pytest.fixture
def read_topics() -> TopicReader:
    """Reads Kafka topics until enough records match (a fixture: test modules cannot import
    conftest): ``await read_topics(bootstrap, topics, wanted, count, settle=0.0)``, from the
    records stamped at most a minute before the test began."""
    since = time.time() - READ_BACK_SECONDS
    return functools.partial(_read_topics, since=since)
