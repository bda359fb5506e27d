"""Mapping: every NHS England ADT example becomes the resources it should, all valid FHIR R4,
keyed by the patient; and the details of DESIGN.md's contract (NHS number, admission method,
diagnoses inline on the Encounter)."""

from __future__ import annotations

from collections import Counter
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from fhir_common.codes import (
    ADMISSION_METHOD_EXTENSION,
    EMERGENCY_ADMISSION_METHODS,
    HYPOGLYCAEMIA,
    ICD10,
)
from fhir_common.feeds import Feed, FeedKind
from fhir_common.identifiers import NHS_NUMBER_SYSTEM, ODS_ORGANIZATION_SYSTEM
from fhir_common.validation import validate_resource
from ingest_acute import er7, mapping, parsing
from ingest_acute.events import ADT_EVENTS
from ingest_acute.outcome import AckCode, ErrorCode, Rejected

FEED = Feed(id="rcb-pas", kind=FeedKind.HL7V2, ods="RCB", setting="acute", sender="RCB")
LONDON = ZoneInfo("Europe/London")
NHS_SAMPLE_NUMBER = "3333333333"

# The status each trigger of the samples leaves the Encounter in.
STATUS = {
    "A01": "in-progress",
    "A02": "in-progress",
    "A03": "finished",
    "A04": "in-progress",
    "A05": "planned",
    "A08": "in-progress",
    "A11": "entered-in-error",
    "A12": "in-progress",
    "A13": "in-progress",
    "A14": "planned",
    "A15": "in-progress",
    "A16": "in-progress",
    "A21": "onleave",
    "A22": "in-progress",
    "A25": "in-progress",
    "A26": "in-progress",
    "A27": "cancelled",
    "A38": "cancelled",
    "A52": "in-progress",
    "A53": "onleave",
}


def mapped(data: bytes, known: mapping.Known | None = None) -> mapping.Mapped:
    message = parsing.parse(er7.decode(data))
    return mapping.build(mapping.plan(message, FEED, LONDON), known or mapping.Known())


def of_type(result: mapping.Mapped, resource_type: str) -> list[dict[str, Any]]:
    return [r for _, r in result.resources if r["resourceType"] == resource_type]


def segments(data: bytes, name: str) -> list[str]:
    lines = er7.decode(data).text.split("\r")
    return [line for line in lines if line.startswith(f"{name}|")]


def test_every_nhs_adt_example_maps_to_valid_fhir(nhs_adt_sample: Any) -> None:
    sample = nhs_adt_sample
    result = mapped(sample.data)
    message = parsing.parse(er7.decode(sample.data))
    event = ADT_EVENTS[message.header.trigger]
    types = Counter(r["resourceType"] for _, r in result.resources)
    assert types["Patient"] == (2 if event.merge else 1)
    assert types["Encounter"] == (1 if event.encounter else 0)
    assert types["Condition"] == len(segments(sample.data, "DG1"))
    assert types["AllergyIntolerance"] == len(segments(sample.data, "AL1"))
    assert types["Observation"] == len(segments(sample.data, "OBX"))
    for _, resource in result.resources:
        assert validate_resource(resource) == [], (resource["resourceType"], resource)
    # everything about the patient goes under the NHS number (the merged-away one aside)
    keys = Counter(key for key, _ in result.resources)
    assert keys.most_common(1)[0][0] == NHS_SAMPLE_NUMBER
    if event.encounter:
        (encounter,) = of_type(result, "Encounter")
        assert encounter["status"] == STATUS[message.header.trigger]
        assert encounter["subject"]["reference"] == f"Patient/{of_type(result, 'Patient')[0]['id']}"


def test_queries_are_not_ours_to_take(nhs_query_sample: Any) -> None:
    sample = nhs_query_sample
    message = parsing.parse(er7.decode(sample.data))
    with pytest.raises(Rejected) as refused:
        mapping.plan(message, FEED, LONDON)
    assert refused.value.ack is AckCode.REJECT
    assert refused.value.problem.code is ErrorCode.UNSUPPORTED_MESSAGE_TYPE


def test_the_nhs_admission_in_detail(samples: Any) -> None:
    sample = samples.nhs("A01_example.txt")
    result = mapped(sample.data)
    (patient,) = of_type(result, "Patient")
    (encounter,) = of_type(result, "Encounter")
    (condition,) = of_type(result, "Condition")
    (allergy,) = of_type(result, "AllergyIntolerance")
    assert patient["identifier"] == [{"system": NHS_NUMBER_SYSTEM, "value": NHS_SAMPLE_NUMBER}]
    assert patient["name"] == [
        {"use": "official", "family": "SMITH", "given": ["FREDRICA", "J"], "prefix": ["MRS"]}
    ]
    assert (patient["gender"], patient["birthDate"]) == ("female", "1965-12-13")
    assert patient["address"][0]["postalCode"] == "YO32 5TT"
    practice, gp = patient["generalPractitioner"]
    assert practice["identifier"] == {"system": ODS_ORGANIZATION_SYSTEM, "value": "Y06601"}
    assert gp["identifier"]["value"] == "G5612908"
    assert encounter["class"]["code"] == "IMP"
    assert encounter["period"] == {"start": "2010-10-20T17:16:00+01:00"}  # BST, no offset sent
    method = encounter["hospitalization"]["extension"][0]
    assert method["url"] == ADMISSION_METHOD_EXTENSION
    assert method["valueCodeableConcept"]["coding"][0]["code"] == "13"
    assert encounter["serviceType"]["coding"][0]["code"] == "300"
    assert encounter["participant"][0]["individual"]["display"] == "Dr Samuel Darwin"
    assert encounter["location"][0]["status"] == "active"
    # the diagnosis is a Condition, and inline on the Encounter (DESIGN.md)
    assert condition["code"]["coding"][0] == {
        "system": ICD10,
        "code": "N39.3",
        "display": "Stress Incontinence",
    }
    assert encounter["reasonCode"] == [condition["code"]]
    assert encounter["diagnosis"] == [
        {
            "condition": {"reference": f"Condition/{condition['id']}"},
            "use": {
                "coding": [
                    {
                        "system": "http://terminology.hl7.org/CodeSystem/diagnosis-role",
                        "code": "AD",
                        "display": "Admission diagnosis",
                    }
                ]
            },
            "rank": 1,
        }
    ]
    assert condition["encounter"] == {"reference": f"Encounter/{encounter['id']}"}
    assert allergy["category"] == ["medication"]
    assert {m["meta"]["source"] for _, m in result.resources} == {
        "https://fhir.joinedup.nhs.uk/feed/rcb-pas"
    }


ED_ATTENDANCE = (
    "MSH|^~\\&|EDIS|RCB|JOINEDUP|JOINEDUP|20240105031500||ADT^A04^ADT_A01|ED1|P|2.4\r"
    "EVN|A04|20240105031500\r"
    "PID|1||9434765919^^^NHS^NH~R100^^^RCB^MR||JONES^ALAN||19580212|1\r"
    "PV1|1|E|ED^MAJORS^CUBE3^RCB||||C1234567^WHO^JANE^^^DR^^^GMC||||||||||||ED99\r"
    "PV2|||E16.2^Hypoglycaemia, unspecified^I10\r"
    "DG1|1||E11.6^Type 2 diabetes with other complications^I10||20240105||\r"
)


def test_an_emergency_attendance_carries_its_codes_for_the_rules() -> None:
    result = mapped(ED_ATTENDANCE.encode())
    (encounter,) = of_type(result, "Encounter")
    assert encounter["class"]["code"] == "EMER"
    assert encounter["status"] == "in-progress"
    assert encounter["period"]["start"] == "2024-01-05T03:15:00+00:00"  # GMT in winter
    assert HYPOGLYCAEMIA.matches_any(encounter["reasonCode"])
    codes = [c["coding"][0]["code"] for c in encounter["reasonCode"]]
    assert codes == ["E16.2", "E11.6"]  # chief complaint first, then the diagnoses
    assert {key for key, _ in result.resources} == {"9434765919"}


def test_an_emergency_admission_method_is_an_nhs_code() -> None:
    text = (
        ED_ATTENDANCE.replace("ADT^A04", "ADT^A01")
        .replace("PV1|1|E|", "PV1|1|I|")
        .replace("||||C1234567", "|21|||C1234567")
    )
    (encounter,) = of_type(mapped(text.encode()), "Encounter")
    method = encounter["hospitalization"]["extension"][0]["valueCodeableConcept"]
    assert method["coding"][0]["code"] in EMERGENCY_ADMISSION_METHODS
    assert encounter["class"]["code"] == "IMP"


def test_an_impossible_birth_date_is_left_out_and_reported(samples: Any) -> None:
    sample = samples.nhs("A28_Example.txt")
    result = mapped(sample.data)  # PID-7 is 196513121515: month 13
    (patient,) = of_type(result, "Patient")
    assert "birthDate" not in patient
    assert result.warnings == ["PID-7: '196513121515' is not a real date/time; left out"]


def test_a_patient_sent_once_with_nhs_number_keeps_its_key_without_it() -> None:
    first = ED_ATTENDANCE
    later = first.replace("9434765919^^^NHS^NH~", "").replace("ED1", "ED2")
    patient_ref = f"Patient/{of_type(mapped(first.encode()), 'Patient')[0]['id']}"
    known = mapping.Known(keys={patient_ref: "9434765919"})
    result = mapped(later.encode(), known)
    assert {key for key, _ in result.resources} == {"9434765919"}
    (patient,) = of_type(result, "Patient")
    assert {"system": NHS_NUMBER_SYSTEM, "value": "9434765919"} in patient["identifier"]
    # never seen before: the key is <feed>|<MRN>
    assert {key for key, _ in mapped(later.encode()).resources} == {"rcb-pas|R100"}


@pytest.mark.parametrize(
    ("kind", "code"),
    [
        ("ADT^A17", ErrorCode.UNSUPPORTED_EVENT_CODE),
        ("SIU^S12", ErrorCode.UNSUPPORTED_MESSAGE_TYPE),
    ],
)
def test_events_we_do_not_map_are_refused_not_guessed(kind: str, code: ErrorCode) -> None:
    text = ED_ATTENDANCE.replace("ADT^A04^ADT_A01", kind)
    with pytest.raises(Rejected) as refused:
        mapping.plan(parsing.parse(er7.decode(text.encode())), FEED, LONDON)
    assert refused.value.ack is AckCode.REJECT
    assert refused.value.problem.code is code


def test_a_message_without_pid_is_an_application_error() -> None:
    text = "MSH|^~\\&|EDIS|RCB|||20240105||ADT^A01|X|P|2.4\rPV1|1|E\r"
    with pytest.raises(Rejected) as refused:
        mapping.plan(parsing.parse(er7.decode(text.encode())), FEED, LONDON)
    assert refused.value.ack is AckCode.ERROR
