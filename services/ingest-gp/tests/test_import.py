"""Bulk NDJSON import (ingest_gp.bulk, ingest_gp.workers): kick-off by upload or by Parameters
naming files under the import directory, 202 + status URL, progress, the final report with
per-line errors, cancel, idempotency, and a job resumed after a restart."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import orjson
import pytest
from sqlalchemy import select

from fhir_common.identifiers import resource_id
from ingest_gp.tables import published

NDJSON = "application/fhir+ndjson"


def synthea_ndjson(samples: Any, name: str = "Buster_Hoeger") -> tuple[bytes, Counter[str]]:
    """One Synthea record as Bulk Data NDJSON: one resource a line, relative references."""
    path = next(samples.synthea.glob(f"{name}_*.json"))
    bundle = json.loads(path.read_text())
    types = {e["fullUrl"]: e["resource"]["resourceType"] for e in bundle["entry"]}
    text = path.read_text()
    for full_url, resource_type in types.items():
        text = text.replace(
            f'"{full_url}"', f'"{resource_type}/{full_url.removeprefix("urn:uuid:")}"'
        )
    lines = [orjson.dumps(e["resource"]) for e in json.loads(text)["entry"]]
    counts = Counter(e["resource"]["resourceType"] for e in bundle["entry"])
    return b"\n".join(lines) + b"\n", counts


def put_file(path: Path, body: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(body)
    return path


async def kick_off(gp: Any, body: bytes, content_type: str = NDJSON, **headers: str) -> Any:
    response = await gp.client.post(
        "/fhir/$import", content=body, headers={**gp.headers(content_type), **headers}
    )
    return response


async def imported(gp: Any, body: bytes) -> dict[str, Any]:
    response = await kick_off(gp, body)
    assert response.status_code == 202, response.text
    done = await gp.wait_for_import(response.headers["Content-Location"])
    assert done.status_code == 200, done.text
    report: dict[str, Any] = done.json()
    return report


async def test_an_uploaded_synthea_record_is_imported(gp: Any, samples: Any) -> None:
    body, counts = synthea_ndjson(samples)
    response = await kick_off(gp, body)
    assert response.status_code == 202
    status_url = response.headers["Content-Location"]
    assert "/fhir/$import-status/" in status_url
    done = await gp.wait_for_import(status_url)
    assert done.status_code == 200, done.text
    report = done.json()
    assert report["status"] == "completed"
    assert report["lines"] == report["resources"] == report["published"] == sum(counts.values())
    assert report["failed"] == 0
    assert report["error"] == []
    assert {o["type"]: o["count"] for o in report["output"]} == dict(counts)
    assert Counter(m.topic.removeprefix("fhir.") for m in gp.published) == counts
    patient = gp.resources("Patient")[0]
    patient_key = f"gp-test|{patient['id']}"
    assert set(gp.keys("Observation")) == {patient_key}
    assert gp.resources("Encounter")[0]["subject"] == {"reference": f"Patient/{patient['id']}"}
    # the uploaded body is gone once the job is done
    assert list((Path(gp.settings.import_dir()) / "uploads").iterdir()) == []


async def test_the_same_file_twice_publishes_nothing_new(gp: Any, samples: Any) -> None:
    body, counts = synthea_ndjson(samples)
    await imported(gp, body)
    published = len(gp.published)
    again = await imported(gp, body)
    assert again["published"] == 0
    assert again["unchanged"] == sum(counts.values())
    assert len(gp.published) == published


async def test_bad_lines_are_reported_by_line_and_the_rest_imported(gp: Any) -> None:
    good = {"resourceType": "Patient", "id": "a", "gender": "male"}
    lines = [
        orjson.dumps(good),  # 1
        b'{"resourceType": "Patient", "id": "b", "birthDate": "1974-13-45"}',  # 2
        b"",  # 3: blank lines are allowed
        b'{"resourceType": "Patient", "id": ',  # 4: malformed
        b'["not", "a", "resource"]',  # 5
        b'{"resourceType": "Observation", "status": "final", "code": {"text": "x"},'
        b' "subject": {"reference": "Patient?identifier=x|y"}}',  # 6
        orjson.dumps({**good, "id": "c"}),  # 7
    ]
    report = await imported(gp, b"\n".join(lines))
    assert (report["lines"], report["resources"], report["failed"]) == (6, 2, 4)
    by_line = {e["line"]: e["outcome"]["issue"] for e in report["error"]}
    assert sorted(by_line) == [2, 4, 5, 6]
    assert by_line[2][0]["expression"] == ["Patient.birthDate"]
    assert "malformed JSON" in by_line[4][0]["diagnostics"]
    assert by_line[6][0]["code"] == "not-supported"
    assert [p["id"] for p in gp.resources("Patient")] == [
        resource_id("gp-test", "Patient", "a"),
        resource_id("gp-test", "Patient", "c"),
    ]
    # every refused line is kept as it was sent (without surrounding white space)
    refused = [lines[1], lines[3], lines[4], lines[5]]
    assert sorted(m.value for m in gp.dead) == sorted(line.strip() for line in refused)


async def test_a_line_over_the_limit_is_skipped_not_held(gp_factory: Any) -> None:
    async with gp_factory(ingest_gp_max_line_bytes=200) as gp:
        big = {"resourceType": "Patient", "id": "big", "name": [{"text": "x" * 500}]}
        small = {"resourceType": "Patient", "id": "small"}
        report = await imported(gp, orjson.dumps(big) + b"\n" + orjson.dumps(small) + b"\n")
        assert report["failed"] == 1
        assert report["error"][0]["line"] == 1
        assert report["error"][0]["outcome"]["issue"][0]["code"] == "too-long"
        assert len(gp.resources("Patient")) == 1


async def test_parameters_name_files_under_the_import_directory(gp: Any, samples: Any) -> None:
    body, counts = synthea_ndjson(samples)
    target = put_file(Path(gp.settings.import_dir()) / "buster.ndjson", body)
    params = {
        "resourceType": "Parameters",
        "parameter": [
            {"name": "inputFormat", "valueCode": "application/fhir+ndjson"},
            {"name": "inputSource", "valueUri": "https://gp.example/"},
            {
                "name": "input",
                "part": [
                    {"name": "type", "valueCode": "Observation"},
                    {"name": "url", "valueUrl": target.as_uri()},
                ],
            },
        ],
    }
    response = await kick_off(gp, orjson.dumps(params), "application/fhir+json")
    assert response.status_code == 202, response.text
    done = await gp.wait_for_import(response.headers["Content-Location"])
    report = done.json()
    # the input was declared to hold Observations: every other line is refused as such
    assert report["resources"] == counts["Observation"]
    assert report["failed"] == sum(counts.values()) - counts["Observation"]
    assert report["input"] == [{"type": "Observation", "url": target.as_uri()}]
    assert target.exists()  # a named file is the provider's, not ours to delete


@pytest.mark.parametrize(
    ("url", "code"),
    [
        ("file:///etc/passwd", "security"),
        ("https://example.org/data.ndjson", "security"),
        ("file://{root}/../outside.ndjson", "security"),
        ("file://{root}/missing.ndjson", "not-found"),
    ],
)
async def test_only_files_under_the_import_directory_are_read(gp: Any, url: str, code: str) -> None:
    root = put_file(Path(gp.settings.import_dir()) / "inside.ndjson", b"{}\n").parent.resolve()
    put_file(root.parent / "outside.ndjson", b"{}\n")
    params = {
        "resourceType": "Parameters",
        "parameter": [
            {"name": "input", "part": [{"name": "url", "valueUrl": url.format(root=root)}]}
        ],
    }
    response = await kick_off(gp, orjson.dumps(params), "application/fhir+json")
    assert response.status_code == 400
    [issue] = response.json()["issue"]
    assert issue["expression"] == ["Parameters.parameter[0].part[0].value"]
    if code == "not-found":
        assert issue["code"] == "not-found"
    else:
        assert (
            issue["code"] in ("security", "not-supported") or "only file://" in issue["diagnostics"]
        )


async def test_a_job_can_be_cancelled(gp_factory: Any) -> None:
    async with gp_factory(ingest_gp_import_batch=1) as gp:
        lines = [orjson.dumps({"resourceType": "Patient", "id": f"p{i}"}) for i in range(2000)]
        response = await kick_off(gp, b"\n".join(lines))
        status_url = response.headers["Content-Location"]
        cancelled = await gp.client.delete(status_url, headers=gp.headers(None))
        assert cancelled.status_code == 202
        after = await gp.client.get(status_url, headers=gp.headers(None))
        assert after.status_code == 404
        assert "cancelled" in after.json()["issue"][0]["diagnostics"]
        await gp.idle()
        assert len(gp.published) < 2000
        # a finished (here: cancelled) job can then be forgotten
        assert (await gp.client.delete(status_url, headers=gp.headers(None))).status_code == 202
        gone = await gp.client.get(status_url, headers=gp.headers(None))
        assert gone.status_code == 404


async def test_a_job_interrupted_by_a_restart_is_resumed(gp_factory: Any) -> None:
    lines = [orjson.dumps({"resourceType": "Patient", "id": f"p{i}"}) for i in range(600)]
    async with gp_factory(ingest_gp_import_batch=10) as gp:
        response = await kick_off(gp, b"\n".join(lines))
        status_url = response.headers["Content-Location"]
        while True:  # stop the service part-way
            progress = await gp.client.get(status_url, headers=gp.headers(None))
            assert progress.status_code == 202
            if " 0 lines" not in progress.headers.get("X-Progress", " 0 lines"):
                break
    async with gp_factory(ingest_gp_import_batch=10) as gp:
        done = await gp.wait_for_import(status_url)
        assert done.status_code == 200, done.text
        report = done.json()
        second_run = {orjson.loads(m.value)["id"] for m in gp.published}
        async with gp.app.state.ctx.db.transaction() as session:
            remembered = set((await session.execute(select(published.c.resource_ref))).scalars())
    assert report["status"] == "completed"
    assert (report["lines"], report["resources"]) == (600, 600)
    assert report["published"] + report["unchanged"] == 600
    assert 0 < len(second_run) < 600  # resumed, not started again
    assert remembered == {
        f"Patient/{resource_id('gp-test', 'Patient', f'p{i}')}" for i in range(600)
    }


async def test_a_token_may_import_only_what_its_scopes_allow(gp: Any) -> None:
    lines = [
        orjson.dumps({"resourceType": "Patient", "id": "p"}),
        orjson.dumps({"resourceType": "Observation", "status": "final", "code": {"text": "x"}}),
    ]
    response = await gp.client.post(
        "/fhir/$import",
        content=b"\n".join(lines),
        headers=gp.headers(NDJSON, scopes=["system/Patient.cu"]),
    )
    report = (await gp.wait_for_import(response.headers["Content-Location"])).json()
    assert report["failed"] == 1
    assert report["error"][0]["outcome"]["issue"][0]["code"] == "forbidden"


async def test_another_feed_cannot_see_or_cancel_a_job(gp: Any, samples: Any) -> None:
    from fhir_common.feeds import Feed, FeedKind, FeedRegistry

    other = Feed(id="gp-other", kind=FeedKind.FHIR, ods="Y05555", setting="primary")
    FeedRegistry(gp.settings.resolved_feeds_file()).add(other)
    body, _ = synthea_ndjson(samples)
    response = await kick_off(gp, body)
    status_url = response.headers["Content-Location"]
    theirs = gp.headers(None, feed=other)
    assert (await gp.client.get(status_url, headers=theirs)).status_code == 404
    assert (await gp.client.delete(status_url, headers=theirs)).status_code == 404
    assert (await gp.wait_for_import(status_url)).status_code == 200


async def test_an_import_runs_in_the_validation_pool(gp_factory: Any, samples: Any) -> None:
    async with gp_factory(ingest_gp_workers=1, ingest_gp_import_batch=50) as gp:
        body, counts = synthea_ndjson(samples)
        report = await imported(gp, body)
        assert report["published"] == sum(counts.values())


async def test_a_changed_line_is_checked_and_published_alone(gp: Any) -> None:
    lines = [orjson.dumps({"resourceType": "Patient", "id": f"p{i}"}) for i in range(20)]
    first = await imported(gp, b"\n".join(lines))
    assert first["published"] == 20
    lines[7] = orjson.dumps({"resourceType": "Patient", "id": "p7", "gender": "other"})
    second = await imported(gp, b"\n".join(lines))
    assert (second["published"], second["unchanged"]) == (1, 19)
    assert {o["type"]: o["count"] for o in second["output"]} == {"Patient": 20}
    assert gp.resources("Patient")[-1]["gender"] == "other"
