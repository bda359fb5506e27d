"""The shared samples, all of them (issue 5, point 7): every official R4 JSON example is accepted;
the example Bundles ingest-gp takes natively are taken, and those it cannot take are refused
precisely; every Synthea record is accepted and its resources land on the right topics.

(The UK Core XML examples are in test_xml.py.)
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import orjson
import pytest

CORE = Path(__file__).resolve().parents[4] / "shared" / "samples" / "fhir-r4-core-examples"

# Example Bundles of a type ingest-gp takes, and how each fares when pushed as it is.
NATIVE = {
    "Bundle-bundle-references.json": "accepted",
    "Bundle-dg2.json": "accepted",
    "Bundle-f001.json": "accepted",
    "Bundle-f202.json": "accepted",
    "Bundle-lipids.json": "accepted",
    "Bundle-report.json": "accepted",
    "Bundle-hla-1.json": "accepted",
    "Bundle-xds.json": "accepted",
    "Bundle-bundle-transaction.json": "refused",
    "Bundle-bundle-request-medsallergies.json": "entries refused",
    "Bundle-bundle-request-simplesummary.json": "entries refused",
}


def core_examples() -> list[Path]:
    return sorted(p for p in CORE.glob("*.json") if p.name != "package.json")


async def test_every_official_r4_example_is_accepted(gp: Any) -> None:
    """All 253 examples in one batch, one entry each (Bundles of any type as resources)."""
    files = core_examples()
    assert len(files) == 253
    entries = []
    for path in files:
        resource = json.loads(path.read_text())
        entries.append(
            {"resource": resource, "request": {"method": "POST", "url": resource["resourceType"]}}
        )
    response = await gp.push({"resourceType": "Bundle", "type": "batch", "entry": entries})
    assert response.status_code == 200, response.text
    statuses = [e["response"]["status"] for e in response.json()["entry"]]
    refused = {f.name: s for f, s in zip(files, statuses, strict=True) if s != "201 Created"}
    assert refused == {}
    sent = Counter(json.loads(p.read_text())["resourceType"] for p in files)
    assert Counter(m.topic.removeprefix("fhir.") for m in gp.published) == sent
    assert gp.dead == []


@pytest.mark.parametrize("name", sorted(NATIVE))
async def test_example_bundles_pushed_as_they_are(gp: Any, name: str) -> None:
    bundle = json.loads((CORE / name).read_text())
    response = await gp.push(bundle)
    fate = NATIVE[name]
    if fate == "accepted":
        assert response.status_code == 200, response.text
        answer = response.json()
        assert all(e["response"]["status"] in ("200 OK", "201 Created") for e in answer["entry"])
        assert len(gp.published) == len(bundle["entry"])
    elif fate == "entries refused":  # a batch of reads: each entry refused at its method
        assert response.status_code == 200
        for i, entry in enumerate(response.json()["entry"]):
            assert entry["response"]["status"] == "422"
            issue = entry["response"]["outcome"]["issue"][0]
            assert issue["code"] == "not-supported"
            assert issue["expression"] == [f"Bundle.entry[{i}].request.method"]
        assert gp.published == []
    else:  # the official transaction example also deletes, reads and calls an operation
        assert response.status_code == 422
        where = [e for i in response.json()["issue"] for e in i["expression"]]
        assert where == [
            "Bundle.entry[5].request.method",  # DELETE Patient/234
            "Bundle.entry[6].request.method",  # DELETE Patient?identifier=123456
            "Bundle.entry[7].request.url",  # POST ValueSet/$lookup
            "Bundle.entry[8].request.method",  # GET Patient?name=peter
            "Bundle.entry[9].request.method",  # GET Patient/12334
        ]
        assert gp.published == []
        assert [orjson.loads(m.value) for m in gp.dead] == [bundle]


@pytest.mark.parametrize(
    "name",
    [
        "Bundle-10bb101f-a121-4264-a920-67be9cb82c74.json",  # message
        "Bundle-father.json",  # document
        "Bundle-bundle-example.json",  # searchset
        "Bundle-bundle-response.json",  # transaction-response
    ],
)
async def test_bundles_of_other_types_are_refused_at_their_type(gp: Any, name: str) -> None:
    response = await gp.push(json.loads((CORE / name).read_text()))
    assert response.status_code == 400
    [issue] = response.json()["issue"]
    assert (issue["code"], issue["expression"]) == ("not-supported", ["Bundle.type"])


async def test_every_synthea_record_is_accepted_and_lands_on_its_topics(
    gp: Any, samples: Any
) -> None:
    files = sorted(samples.synthea.glob("*.json"))
    assert len(files) == 19
    seen: set[str] = set()  # what earlier records published (shared practitioners, ...)
    for path in files:
        bundle = json.loads(path.read_text())
        before = len(gp.published)
        response = await gp.push(bundle)
        assert response.status_code == 200, f"{path.name}: {response.text[:500]}"
        answer = response.json()
        assert answer["type"] == "transaction-response"
        assert {e["response"]["status"] for e in answer["entry"]} == {"201 Created"}
        mine = gp.published[before:]
        locations = [e["response"]["location"] for e in answer["entry"]]
        new = Counter(loc.split("/")[0] for loc in locations if loc not in seen)
        assert Counter(m.topic.removeprefix("fhir.") for m in mine) == new, path.name
        assert int(response.headers["X-Unchanged"]) == len(locations) - sum(new.values())
        seen.update(locations)
        for message in mine:  # the topic is the resource's type
            assert orjson.loads(message.value)["resourceType"] == message.topic[5:]
        patient_id = next(orjson.loads(m.value)["id"] for m in mine if m.topic == "fhir.Patient")
        about = [m for m in mine if m.topic not in ("fhir.Organization", "fhir.Practitioner")]
        assert {m.key for m in about} == {f"gp-test|{patient_id}"}, path.name
    assert gp.dead == []
