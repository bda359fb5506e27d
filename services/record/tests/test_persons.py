"""One person across providers (record.persons), through the record's consumer and API on SQLite
and PostgreSQL: the same NHS number joins feeds; a Patient that gains an NHS number brings its
history along, whichever order its messages arrive in; an A40 merge (``link`` replaced-by /
replaces, as ingest-acute sends it) joins the retired record to the survivor, now or when the
survivor arrives; a record without an NHS number stays apart, and says so."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

import orjson

from fhir_common.db import Database, upsert
from fhir_common.events import Message, event_headers, fhir_message
from fhir_common.identifiers import NHS_NUMBER_SYSTEM
from record import persons
from record.tables import pending_merges

N1, N2 = "9434765919", "9912003888"
MRN = "https://fhir.joinedup.nhs.uk/Id/RXX/mrn"


def hospital_patient(pid: str, mrn: str, nhs: str | None = None, **extra: Any) -> dict[str, Any]:
    identifiers = [{"system": MRN, "value": mrn}]
    if nhs:
        identifiers.append({"system": NHS_NUMBER_SYSTEM, "value": nhs})
    return {
        "resourceType": "Patient",
        "id": pid,
        "identifier": identifiers,
        "name": [{"family": "Smith", "given": ["Fredrica"]}],
        **extra,
    }


def visit(eid: str, pid: str) -> dict[str, Any]:
    return {
        "resourceType": "Encounter",
        "id": eid,
        "status": "finished",
        "class": {"code": "EMER"},
        "subject": {"reference": f"Patient/{pid}"},
    }


def sent(resource: dict[str, Any], key: str, feed: str = "acute-b") -> Message:
    return fhir_message(resource, key, event_headers(source=feed, setting="acute"))


async def everything(record: Any, pid: str) -> list[str]:
    bundle = await record.bundle(f"/fhir/Patient/{pid}/$everything")
    return sorted(
        f"{e['resource']['resourceType']}/{e['resource']['id']}"
        for e in bundle.get("entry", [])
        if e["search"]["mode"] == "match"
    )


async def settles(record: Any, pid: str, expected: list[str], seconds: float = 10) -> None:
    """$everything of ``pid`` becomes ``expected``: a merge made by two consumers at once is
    completed by the periodic sweep of waiting merges."""
    found: list[str] = []
    for _ in range(int(seconds / 0.1)):
        found = await everything(record, pid)
        if found == expected:
            return
        await asyncio.sleep(0.1)
    assert found == expected


async def notes(record: Any, pid: str) -> list[str]:
    bundle = await record.bundle(f"/fhir/Patient/{pid}/$everything")
    return [
        issue["diagnostics"]
        for e in bundle.get("entry", [])
        if e["search"]["mode"] == "outcome"
        for issue in e["resource"]["issue"]
    ]


def gp(pid: str = "gp1") -> dict[str, Any]:
    return {
        "resourceType": "Patient",
        "id": pid,
        "identifier": [{"system": NHS_NUMBER_SYSTEM, "value": N1}],
        "name": [{"family": "Smith", "given": ["Fredrica"]}],
    }


async def test_a_record_without_an_nhs_number_stays_apart_and_says_so(record: Any) -> None:
    await record.publish(
        sent(hospital_patient("h1", "M1"), "acute-b|M1"),
        sent(visit("v1", "h1"), "acute-b|M1"),
        sent(gp(), N1, "gp-a"),
    )
    assert await everything(record, "h1") == ["Encounter/v1", "Patient/h1"]
    [note] = await notes(record, "h1")
    assert "no NHS number" in note
    assert await notes(record, "gp1") == []
    summary = (await record.get("/summary/h1")).json()
    assert summary["person"]["nhsNumber"] is None
    assert summary["person"]["joined"] is False
    assert "not joined" in summary["person"]["note"]


async def test_a_patient_that_gains_an_nhs_number_brings_its_history(record: Any) -> None:
    await record.publish(
        sent(hospital_patient("h1", "M1"), "acute-b|M1"),
        sent(visit("v1", "h1"), "acute-b|M1"),
        sent(gp(), N1, "gp-a"),
    )
    assert "Encounter/v1" not in await everything(record, "gp1")
    # A08: the hospital learns the NHS number; its messages are keyed by it from now on
    await record.publish(sent(hospital_patient("h1", "M1", N1), N1))
    joined = ["Encounter/v1", "Patient/gp1", "Patient/h1"]
    assert await everything(record, "gp1") == joined
    assert await everything(record, "h1") == joined
    # a late message still keyed by the old local key joins the person too
    await record.publish(sent(visit("v2", "h1"), "acute-b|M1"))
    assert "Encounter/v2" in await everything(record, "gp1")
    announced = {
        orjson.loads(m.value)["id"]: orjson.loads(m.value)["patient"] for m in record.changes
    }
    assert announced["v2"] == N1  # record.changes names the person
    assert announced["v1"] == "acute-b|M1"  # (announced before the link)
    assert (await record.get("/summary/h1")).json()["person"]["nhsNumber"] == N1


async def test_the_link_holds_when_the_older_message_arrives_last(record: Any) -> None:
    """Keys differ, so partitions differ: the update may overtake the first message."""
    await record.publish(sent(hospital_patient("h1", "M1", N1), N1), sent(gp(), N1, "gp-a"))
    await record.publish(
        sent(hospital_patient("h1", "M1"), "acute-b|M1"),  # older, without the NHS number
        sent(visit("v1", "h1"), "acute-b|M1"),
    )
    assert await everything(record, "gp1") == ["Encounter/v1", "Patient/gp1", "Patient/h1"]
    stored = (await record.get("/fhir/Patient/h1")).json()
    assert stored["meta"]["versionId"] == "2"  # both versions kept, in arrival order


async def test_an_a40_merge_joins_the_retired_record_to_the_survivor(record: Any) -> None:
    await record.publish(
        sent(hospital_patient("tmp", "TMP9"), "acute-b|TMP9"),  # registered in ED, no NHS no.
        sent(visit("ed1", "tmp"), "acute-b|TMP9"),
        sent(hospital_patient("main", "M1", N1), N1),
        sent(visit("ip1", "main"), N1),
    )
    assert await everything(record, "main") == ["Encounter/ip1", "Patient/main"]
    # A40: TMP9 merged into M1, as ingest-acute publishes it
    retired = hospital_patient(
        "tmp",
        "TMP9",
        active=False,
        link=[{"other": {"reference": "Patient/main"}, "type": "replaced-by"}],
    )
    survivor = hospital_patient(
        "main", "M1", N1, link=[{"other": {"reference": "Patient/tmp"}, "type": "replaces"}]
    )
    await record.publish(sent(retired, "acute-b|TMP9"), sent(survivor, N1))
    merged = ["Encounter/ed1", "Encounter/ip1", "Patient/main", "Patient/tmp"]
    assert await everything(record, "main") == merged
    assert await everything(record, "tmp") == merged
    summary = (await record.get("/summary/main")).json()
    records = {r["id"]: r for r in summary["records"]}
    assert records["tmp"]["replacedBy"] == "Patient/main"
    assert records["tmp"]["active"] is False
    assert summary["patient"]["id"] == "main"


async def test_a_merge_waits_for_a_survivor_that_has_not_arrived(record: Any) -> None:
    retired = hospital_patient(
        "tmp", "TMP9", link=[{"other": {"reference": "Patient/main"}, "type": "replaced-by"}]
    )
    await record.publish(sent(retired, "acute-b|TMP9"), sent(visit("ed1", "tmp"), "acute-b|TMP9"))
    assert await everything(record, "tmp") == ["Encounter/ed1", "Patient/tmp"]
    await record.publish(sent(hospital_patient("main", "M1", N1), N1))
    assert await everything(record, "main") == ["Encounter/ed1", "Patient/main", "Patient/tmp"]


async def test_a_merge_of_two_local_records_keeps_them_without_an_nhs_number(record: Any) -> None:
    retired = hospital_patient(
        "a", "A1", link=[{"other": {"reference": "Patient/b"}, "type": "replaced-by"}]
    )
    await record.publish(
        sent(hospital_patient("b", "B1"), "acute-b|B1"),
        sent(visit("vb", "b"), "acute-b|B1"),
        sent(visit("va", "a"), "acute-b|A1"),
        sent(retired, "acute-b|A1"),
    )
    await settles(record, "b", ["Encounter/va", "Encounter/vb", "Patient/a", "Patient/b"])
    summary = (await record.get("/summary/b")).json()
    assert summary["person"] == {
        "key": "acute-b|B1",
        "nhsNumber": None,
        "joined": False,
        "providers": ["acute-b"],
        "note": summary["person"]["note"],
    }


async def test_different_nhs_numbers_are_different_people(record: Any) -> None:
    await record.publish(
        sent(hospital_patient("x", "X1", N1), N1),
        sent(hospital_patient("y", "Y1", N2), N2),
    )
    assert await everything(record, "x") == ["Patient/x"]
    assert await everything(record, "y") == ["Patient/y"]


# --- the linker itself ---------------------------------------------------------------------------


async def test_links_are_flat_and_an_nhs_number_names_the_person(db: Database) -> None:
    async with db.transaction() as session:
        linker = persons.Linker(session)
        assert await linker.link("feed|a", "feed|b", "merge")
        assert await linker.link("feed|c", "feed|a", "merge")  # to a linked key: its person
        assert await linker.link("feed|b", N1, "nhs-number")  # the NHS number wins
        assert not await linker.link("feed|a", N1, "merge")  # already one
        assert not await linker.link(N1, "feed|c", "merge")  # no cycle
        found = await linker.persons_of(["feed|a", "feed|b", "feed|c", N1, "other"])
    assert found == {"feed|a": N1, "feed|b": N1, "feed|c": N1, N1: N1, "other": "other"}
    async with db.sessions() as session:
        person = await persons.person_of_key(session, "feed|c")
    assert person.key == N1
    assert person.nhs_number == N1
    assert sorted(person.keys) == sorted([N1, "feed|a", "feed|b", "feed|c"])
    assert person.keys[0] == N1


async def test_waiting_merges_are_made_by_the_sweep(db: Database, kit: Any) -> None:
    """The race of two consumers: the merge waits although its survivor is already stored."""
    await kit.apply(
        db,
        sent(hospital_patient("a", "A1"), "acute-b|A1"),
        sent(hospital_patient("b", "B1"), "acute-b|B1"),
    )
    async with db.transaction() as session:
        row = {"retired": "a", "survivor": "b", "noted_at": datetime.now(UTC)}
        await upsert(session, pending_merges, [row], ["retired", "survivor"])
    async with db.transaction() as session:
        assert await persons.resolve_pending(persons.Linker(session)) == 1
    async with db.transaction() as session:
        assert await persons.resolve_pending(persons.Linker(session)) == 0
        assert (await persons.person_of_key(session, "acute-b|A1")).key == "acute-b|B1"


def test_merge_pairs() -> None:
    retired = {
        "resourceType": "Patient",
        "id": "r",
        "link": [
            {"other": {"reference": "Patient/s"}, "type": "replaced-by"},
            {"other": {"reference": "Patient/t"}, "type": "seealso"},  # not a merge
            {"other": {"reference": "RelatedPerson/x"}, "type": "replaced-by"},
            "junk",
        ],
    }
    assert persons.merge_pairs(retired) == [("r", "s")]
    survivor = {"id": "s", "link": [{"other": {"reference": "Patient/r"}, "type": "replaces"}]}
    assert persons.merge_pairs(survivor) == [("r", "s")]


def test_preferred_key() -> None:
    assert persons.preferred_key(None, "f|1") == "f|1"
    assert persons.preferred_key("f|1", N1) == N1
    assert persons.preferred_key(N1, "f|1") == N1  # never given up for a local key
    assert persons.preferred_key(N1, N2) == N2  # a corrected NHS number moves the Patient
