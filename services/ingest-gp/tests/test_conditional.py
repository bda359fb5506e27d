"""Conditional references, creates and updates (ingest_gp.conditional, ingest_gp.bundles):
``Patient?identifier=system|value`` resolved against the bundle, then against ingest-gp's
identifier index; each failure refused at the FHIRPath of what asked for it."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from fhir_common.events import Header, Message, event_headers, fhir_message
from fhir_common.identifiers import NHS_NUMBER_SYSTEM, resource_id

LOCAL = "https://gp.example/patient-id"
NHS = "9434765919"


def patient(local: str = "p-1", nhs: str | None = NHS) -> dict[str, Any]:
    identifiers = [{"system": LOCAL, "value": local}]
    if nhs:
        identifiers.append({"system": NHS_NUMBER_SYSTEM, "value": nhs})
    return {"resourceType": "Patient", "id": local, "identifier": identifiers, "gender": "female"}


def observation(subject: str, local: str = "o-1") -> dict[str, Any]:
    return {
        "resourceType": "Observation",
        "id": local,
        "status": "final",
        "code": {"text": "weight"},
        "subject": {"reference": subject},
    }


def bundle(*entries: dict[str, Any], kind: str = "transaction") -> dict[str, Any]:
    return {"resourceType": "Bundle", "type": kind, "entry": list(entries)}


def post(resource: dict[str, Any], **request: Any) -> dict[str, Any]:
    return {
        "fullUrl": f"urn:uuid:{resource['resourceType']}-{resource['id']}",
        "resource": resource,
        "request": {"method": "POST", "url": resource["resourceType"], **request},
    }


def put(resource: dict[str, Any], url: str, **request: Any) -> dict[str, Any]:
    return {"resource": resource, "request": {"method": "PUT", "url": url, **request}}


async def test_a_conditional_reference_to_a_patient_in_the_same_bundle(gp: Any) -> None:
    by_nhs = f"Patient?identifier={NHS_NUMBER_SYSTEM}|{NHS}"
    response = await gp.push(bundle(post(patient()), post(observation(by_nhs))))
    assert response.status_code == 200, response.text
    [made] = gp.resources("Patient")
    [obs] = gp.resources("Observation")
    assert obs["subject"] == {"reference": f"Patient/{made['id']}"}
    assert gp.keys("Observation") == [NHS]


async def test_a_conditional_reference_to_a_patient_sent_before(gp: Any) -> None:
    assert (await gp.push(bundle(post(patient())))).status_code == 200
    by_local = f"Patient?identifier={LOCAL}|p-1"
    response = await gp.push(bundle(post(observation(by_local))))
    assert response.status_code == 200, response.text
    [obs] = gp.resources("Observation")
    assert obs["subject"] == {"reference": f"Patient/{resource_id('gp-test', 'Patient', 'p-1')}"}
    assert gp.keys("Observation") == [NHS]
    # a token without a system matches any system
    response = await gp.push(bundle(post(observation("Patient?identifier=p-1", "o-2"))))
    assert response.status_code == 200, response.text


async def test_a_conditional_reference_to_another_feeds_patient(gp: Any) -> None:
    """ingest-gp learns other feeds' patients from fhir.Patient (its consumer)."""
    acute = {
        "resourceType": "Patient",
        "id": resource_id("acute-x", "Patient", "mrn-9"),
        "identifier": [{"system": "https://trust.example/mrn", "value": "mrn-9"}],
    }
    headers = event_headers(source="acute-x", setting="acute")
    await gp.bus.publish([fhir_message(acute, "acute-x|mrn-9", headers)])
    await gp.idle()
    ref = "Patient?identifier=https://trust.example/mrn|mrn-9"
    response = await gp.push(bundle(post(observation(ref))))
    assert response.status_code == 200, response.text
    obs = gp.resources("Observation")[0]
    assert obs["subject"] == {"reference": f"Patient/{acute['id']}"}
    assert gp.keys("Observation") == ["acute-x|mrn-9"]


async def test_a_conditional_reference_that_matches_nothing_refuses_the_transaction(
    gp: Any,
) -> None:
    sent = bundle(post(patient("p-2", None)), post(observation(f"Patient?identifier={LOCAL}|zz")))
    response = await gp.push(sent)
    assert response.status_code == 404
    [issue] = response.json()["issue"]
    assert issue["code"] == "not-found"
    assert issue["expression"] == ["Bundle.entry[1].resource.subject.reference"]
    assert gp.published == []
    assert [orjson.loads(m.value) for m in gp.dead] == [sent]


async def test_a_conditional_reference_that_matches_several_is_refused(gp: Any) -> None:
    twins = bundle(post(patient("p-1")), post(patient("p-2")))  # same NHS number
    assert (await gp.push(twins)).status_code == 200
    ref = f"Patient?identifier={NHS_NUMBER_SYSTEM}|{NHS}"
    response = await gp.push(bundle(post(observation(ref))))
    assert response.status_code == 412
    assert response.json()["issue"][0]["code"] == "multiple-matches"
    in_bundle = await gp.push(
        bundle(post(patient("p-3")), post(patient("p-4")), post(observation(ref)))
    )
    assert in_bundle.status_code == 412


@pytest.mark.parametrize(
    ("reference", "why"),
    [
        ("Patient?name=peter", "not supported"),
        ("Observation?identifier=a|b", "not supported"),
        ("Patient?identifier=", "no value"),
    ],
)
async def test_conditional_references_ingest_gp_cannot_evaluate(
    gp: Any, reference: str, why: str
) -> None:
    response = await gp.push(bundle(post(observation(reference))))
    assert response.status_code == 400
    [issue] = response.json()["issue"]
    assert issue["expression"] == ["Bundle.entry[0].resource.subject.reference"]
    assert why in issue["diagnostics"]


async def test_in_a_batch_a_failed_conditional_reference_fails_only_its_entry(gp: Any) -> None:
    sent = bundle(
        post(patient()), post(observation("Patient?identifier=nobody", "o-9")), kind="batch"
    )
    response = await gp.push(sent)
    assert response.status_code == 200
    assert [e["response"]["status"] for e in response.json()["entry"]] == ["201 Created", "404"]
    assert [m.topic for m in gp.published] == ["fhir.Patient"]
    assert len(gp.dead) == 1


async def test_if_none_exist_creates_nothing_when_the_patient_exists(gp: Any) -> None:
    first = await gp.push(bundle(post(patient())))
    existing = first.json()["entry"][0]["response"]["location"]
    newcomer = patient("p-other")  # a different local id, the same NHS number
    condition = f"identifier={NHS_NUMBER_SYSTEM}|{NHS}"
    sent = bundle(
        post(newcomer, ifNoneExist=condition),
        post(observation("urn:uuid:Patient-p-other")),
    )
    response = await gp.push(sent)
    assert response.status_code == 200, response.text
    [created, made] = response.json()["entry"]
    assert created["response"]["status"] == "200 OK"
    assert created["response"]["location"] == existing
    assert created["response"]["outcome"]["issue"][0]["severity"] == "information"
    assert made["response"]["status"] == "201 Created"
    assert [m.topic for m in gp.published] == ["fhir.Patient", "fhir.Observation"]
    assert gp.resources("Observation")[0]["subject"] == {"reference": existing}
    # the Bulk Data xds example writes it with the type in front: understood too
    again = await gp.push(bundle(post(patient("p-x"), ifNoneExist=f"Patient?{condition}")))
    assert again.json()["entry"][0]["response"]["location"] == existing


async def test_if_none_exist_creates_when_nothing_matches(gp: Any) -> None:
    response = await gp.push(bundle(post(patient(), ifNoneExist=f"identifier={LOCAL}|p-1")))
    assert response.json()["entry"][0]["response"]["status"] == "201 Created"
    assert len(gp.resources("Patient")) == 1


async def test_a_conditional_update_updates_the_match(gp: Any) -> None:
    first = await gp.push(bundle(post(patient())))
    existing = first.json()["entry"][0]["response"]["location"]
    changed = patient("another-local-id")
    changed["gender"] = "male"
    del changed["id"]
    url = f"Patient?identifier={NHS_NUMBER_SYSTEM}|{NHS}"
    response = await gp.push(bundle(put(changed, url)))
    assert response.status_code == 200, response.text
    assert response.json()["entry"][0]["response"]["location"] == existing
    assert [p["gender"] for p in gp.resources("Patient")] == ["female", "male"]
    assert {p["id"] for p in gp.resources("Patient")} == {existing.split("/")[1]}


async def test_a_conditional_update_without_a_match_creates(gp: Any) -> None:
    url = f"Patient?identifier={LOCAL}|p-1"
    response = await gp.push(bundle(put(patient(), url)))
    assert response.status_code == 200, response.text
    location = response.json()["entry"][0]["response"]["location"]
    assert location == f"Patient/{resource_id('gp-test', 'Patient', 'p-1')}"


async def test_put_urls_must_agree_with_the_resource(gp: Any) -> None:
    response = await gp.push(bundle(put(patient(), "Patient/someone-else")))
    assert response.status_code == 400
    assert response.json()["issue"][0]["expression"] == ["Bundle.entry[0].request.url"]
    without_id = patient()
    del without_id["id"]
    response = await gp.push(bundle(put(without_id, "Patient/p-1")))
    assert response.json()["entry"][0]["response"]["location"] == (
        f"Patient/{resource_id('gp-test', 'Patient', 'p-1')}"
    )


async def test_if_match_is_accepted_with_a_warning(gp: Any) -> None:
    response = await gp.push(bundle(put(patient(), "Patient/p-1", ifMatch='W/"2"')))
    assert response.status_code == 200
    outcome = response.json()["entry"][0]["response"]["outcome"]
    assert outcome["issue"][0]["severity"] == "warning"
    assert outcome["issue"][0]["expression"] == ["Bundle.entry[0].request.ifMatch"]


async def test_a_transaction_may_not_write_one_resource_twice(gp: Any) -> None:
    response = await gp.push(bundle(put(patient(), "Patient/p-1"), put(patient(), "Patient/p-1")))
    assert response.status_code == 400
    [issue] = response.json()["issue"]
    assert issue["code"] == "duplicate"
    assert issue["expression"] == ["Bundle.entry[1]"]


async def test_the_directory_is_fed_from_fhir_patient(gp: Any) -> None:
    """A Patient another service publishes keys later resources about it."""
    other = {"resourceType": "Patient", "id": resource_id("gp-test", "Patient", "p-7")}
    message = Message(
        topic="fhir.Patient",
        key="9990000018",
        value=orjson.dumps(other),
        headers={**event_headers(source="gp-test", setting="primary"), Header.SOURCE: "gp-test"},
    )
    await gp.bus.publish([message])
    await gp.idle()
    response = await gp.push(bundle(post(observation("Patient/p-7"))))
    assert response.status_code == 200
    assert gp.keys("Observation") == ["9990000018"]
