"""Event semantics across a patient's messages: admit, transfer (location history), cancel
transfer, discharge, cancel discharge, cancel admit, leave of absence, and merges."""

from __future__ import annotations

from typing import Any
from zoneinfo import ZoneInfo

from fhir_common.feeds import Feed, FeedKind
from ingest_acute import er7, mapping, parsing

FEED = Feed(id="rcb-pas", kind=FeedKind.HL7V2, ods="RCB", setting="acute", sender="RCB")
WARDS = {"A": "WARD-A^^BED1^RCB55", "B": "WARD-B^^BED7^RCB55", "C": "WARD-C^^BED2^RCB55"}


def adt(
    trigger: str,
    at: str,
    ward: str,
    *,
    prior: str = "",
    discharged: str = "",
    mrn: str = "R100",
    nhs: str = "9434765919^^^NHS^NH~",
    extra: str = "",
) -> bytes:
    return (
        f"MSH|^~\\&|PAS|RCB|||{at}||ADT^{trigger}|{trigger}-{at}|P|2.4\r"
        f"EVN|{trigger}|{at}\r"
        f"PID|1||{nhs}{mrn}^^^RCB^MR||SMITH^ANN||19500101|F\r"
        f"PV1|1|I|{WARDS[ward]}|21||{WARDS[prior] if prior else ''}|||||||||||||V555"
        + "|" * 24
        + f"|201001010900|{discharged}\r"
        + extra
    ).encode()


class Hospital:
    """Feeds one patient's messages through the mapping, remembering state as the service does."""

    def __init__(self) -> None:
        self.known = mapping.Known()

    def send(self, data: bytes) -> dict[str, Any]:
        plan = mapping.plan(parsing.parse(er7.decode(data)), FEED, ZoneInfo("Europe/London"))
        result = mapping.build(plan, self.known)
        self.known.encounters.update(result.encounters)
        self.known.keys.update(result.keys)
        self.known.survivors.update(result.merges)
        self.last = result
        return next(r for _, r in result.resources if r["resourceType"] == "Encounter")


def places(encounter: dict[str, Any]) -> list[tuple[str, str, str | None, str | None]]:
    return [
        (
            e["location"]["display"],
            e["status"],
            e.get("period", {}).get("start"),
            e.get("period", {}).get("end"),
        )
        for e in encounter["location"]
    ]


def test_admit_transfer_cancel_transfer_discharge_cancel_discharge() -> None:
    hospital = Hospital()
    admitted = hospital.send(adt("A01", "201001010900", "A"))
    assert admitted["status"] == "in-progress"
    assert places(admitted) == [("WARD-A BED1", "active", "2010-01-01T09:00:00+00:00", None)]

    moved = hospital.send(adt("A02", "201001021000", "B", prior="A"))
    assert moved["id"] == admitted["id"]
    assert places(moved) == [
        ("WARD-A BED1", "completed", "2010-01-01T09:00:00+00:00", "2010-01-02T10:00:00+00:00"),
        ("WARD-B BED7", "active", "2010-01-02T10:00:00+00:00", None),
    ]

    # A12: the transfer to B did not happen; the patient is in A again, as before
    undone = hospital.send(adt("A12", "201001021100", "A", prior="B"))
    assert places(undone) == [("WARD-A BED1", "active", "2010-01-01T09:00:00+00:00", None)]

    hospital.send(adt("A02", "201001031200", "C", prior="A"))
    discharged = hospital.send(adt("A03", "201001041500", "C", discharged="201001041430"))
    assert discharged["status"] == "finished"
    assert discharged["period"] == {
        "start": "2010-01-01T09:00:00+00:00",
        "end": "2010-01-04T14:30:00+00:00",
    }
    assert [p[1] for p in places(discharged)] == ["completed", "completed"]
    assert places(discharged)[-1][3] == "2010-01-04T14:30:00+00:00"

    # A13: the discharge is cancelled: in progress again, in the last bed, no end
    back = hospital.send(adt("A13", "201001041600", "C"))
    assert back["status"] == "in-progress"
    assert "end" not in back["period"]
    assert places(back)[-1] == ("WARD-C BED2", "active", "2010-01-03T12:00:00+00:00", None)


def test_an_update_keeps_what_earlier_events_established() -> None:
    hospital = Hospital()
    hospital.send(adt("A01", "201001010900", "A"))
    hospital.send(adt("A02", "201001021000", "B", prior="A"))
    updated = hospital.send(adt("A08", "201001021200", "B"))
    assert updated["status"] == "in-progress"
    assert [p[0] for p in places(updated)] == ["WARD-A BED1", "WARD-B BED7"]
    hospital.send(adt("A21", "201001021300", "B"))
    assert hospital.send(adt("A08", "201001021400", "B"))["status"] == "onleave"
    assert hospital.send(adt("A22", "201001021500", "B"))["status"] == "in-progress"


def test_cancel_admit_marks_the_encounter_and_its_diagnoses_entered_in_error() -> None:
    hospital = Hospital()
    dg1 = "DG1|1||E16.2^Hypoglycaemia^I10||201001010900|A\r"
    hospital.send(adt("A01", "201001010900", "A", extra=dg1))
    cancelled = hospital.send(adt("A11", "201001010930", "A", extra=dg1))
    assert cancelled["status"] == "entered-in-error"
    (condition,) = [r for _, r in hospital.last.resources if r["resourceType"] == "Condition"]
    assert condition["verificationStatus"]["coding"][0]["code"] == "entered-in-error"
    assert "clinicalStatus" not in condition  # FHIR forbids it on an entered-in-error Condition
    assert places(cancelled)[0][1] == "completed"


def test_later_events_for_a_merged_away_patient_follow_the_survivor() -> None:
    hospital = Hospital()
    # the hospital knew the patient twice: R100 (no NHS number) and R200 (with one)
    hospital.send(adt("A01", "201001010900", "A", mrn="R100", nhs=""))
    old_patient = next(r for _, r in hospital.last.resources if r["resourceType"] == "Patient")
    assert {key for key, _ in hospital.last.resources} == {"rcb-pas|R100"}

    merge = (
        b"MSH|^~\\&|PAS|RCB|||201001020900||ADT^A40^ADT_A39|M1|P|2.4\r"
        b"EVN|A40|201001020900\r"
        b"PID|1||9434765919^^^NHS^NH~R200^^^RCB^MR||SMITH^ANN||19500101|F\r"
        b"MRG|R100^^^RCB^MR\r"
    )
    plan = mapping.plan(parsing.parse(er7.decode(merge)), FEED, ZoneInfo("Europe/London"))
    result = mapping.build(plan, hospital.known)
    survivor, retired = (r for _, r in result.resources)
    assert retired["id"] == old_patient["id"]
    assert retired["active"] is False
    assert retired["link"] == [
        {"other": {"reference": f"Patient/{survivor['id']}"}, "type": "replaced-by"}
    ]
    assert survivor["link"] == [
        {"other": {"reference": f"Patient/{retired['id']}"}, "type": "replaces"}
    ]
    # the retired patient's update goes under its own old key, in order with its history
    assert [key for key, _ in result.resources] == ["9434765919", "rcb-pas|R100"]
    assert result.merges == {"R100": "R200"}
    hospital.known.survivors.update(result.merges)
    hospital.known.keys.update(result.keys)

    # a later message still about R100 is about the survivor (R200, keyed by NHS number)
    later = hospital.send(adt("A08", "201001030900", "A", mrn="R100", nhs=""))
    patient = next(r for _, r in hospital.last.resources if r["resourceType"] == "Patient")
    assert patient["id"] == survivor["id"]
    assert later["subject"] == {"reference": f"Patient/{survivor['id']}"}
    assert {key for key, _ in hospital.last.resources} == {"9434765919"}
    mrns = {
        (i.get("use"), i["value"]) for i in patient["identifier"] if i["system"].endswith("/mrn")
    }
    assert mrns == {("usual", "R200"), ("old", "R100")}
