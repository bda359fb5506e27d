"""CSV extracts over HTTP (ingest_gp.csvingest): rows become FHIR resources as the feed's mapping
says; bad rows are reported by row number and dead-lettered while good rows go through; an
extract sent twice publishes nothing new; feeds without a (working) mapping are refused."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import orjson
import pytest

from fhir_common.feeds import Feed, FeedKind, FeedRegistry
from fhir_common.identifiers import NHS_NUMBER_SYSTEM, resource_id

DATA = Path(__file__).parent / "data" / "csv"
COMMUNITY = Feed(id="community-zc1", kind=FeedKind.CSV, ods="ZC1", setting="community")
MENTAL_HEALTH = Feed(id="mh-zm1", kind=FeedKind.CSV, ods="ZM1", setting="mental-health")
SOCIAL = Feed(id="social-zs1", kind=FeedKind.CSV, ods="ZS1", setting="social-care")
COMMUNITY_HEADER = (
    "Contact ID,NHS Number,Local Patient ID,Surname,Forename,Date of Birth,Gender,Postcode,"
    "Registered GP Practice,Contact Date,Contact Time,Team,Contact Type,Staff Role,Staff ID,"
    "Attendance"
)


def row(**changes: str) -> str:
    values = {
        "Contact ID": "ZC1-1",
        "NHS Number": "943 476 5919",
        "Local Patient ID": "C001",
        "Surname": "SMITH",
        "Forename": "Ann",
        "Date of Birth": "14/04/1937",
        "Gender": "Female",
        "Postcode": "W2 2RL",
        "Registered GP Practice": "Y90001",
        "Contact Date": "04/07/2024",
        "Contact Time": "17:54",
        "Team": "District Nursing",
        "Contact Type": "Face to face - home",
        "Staff Role": "Community Nurse",
        "Staff ID": "61B0501E",
        "Attendance": "Attended",
    }
    values.update({k.replace("_", " "): v for k, v in changes.items()})
    return ",".join(values[c] for c in COMMUNITY_HEADER.split(","))


def extract(*rows: str) -> bytes:
    return ("\r\n".join([COMMUNITY_HEADER, *rows]) + "\r\n").encode()


@pytest.fixture
async def gp(gp_factory: Any, tmp_path: Path) -> Any:
    mappings = tmp_path / "mappings"
    mappings.mkdir()
    registry = FeedRegistry(tmp_path / "feeds.json")
    for feed in (COMMUNITY, MENTAL_HEALTH, SOCIAL):
        shutil.copy(DATA / feed.id / "mapping.yaml", mappings / f"{feed.id}.yaml")
        registry.add(feed)
    async with gp_factory() as running:
        yield running


async def test_a_community_extract_becomes_encounters_and_patients(gp: Any) -> None:
    response = await gp.csv(extract(row()), name="community-zc1-2024-07-05.csv")
    assert response.status_code == 200, response.text
    report = response.json()
    assert report == {
        "feed": "community-zc1",
        "extract": "community-zc1-2024-07-05.csv",
        "rows": 1,
        "accepted": 1,
        "refused": 0,
        "resources": {"Encounter": 1, "Patient": 1},
        "published": 2,
        "unchanged": 0,
        "errors": [],
        "warnings": [],
    }
    [patient] = gp.resources("Patient")
    [encounter] = gp.resources("Encounter")
    assert patient["id"] == resource_id("community-zc1", "Patient", "C001")
    assert patient["identifier"] == [
        {"system": NHS_NUMBER_SYSTEM, "value": "9434765919"},
        {"system": "https://fhir.joinedup.nhs.uk/Id/ZC1/patient-id", "value": "C001"},
    ]
    assert patient["birthDate"] == "1937-04-14"
    assert patient["gender"] == "female"
    assert patient["generalPractitioner"] == [
        {
            "identifier": {
                "system": "https://fhir.nhs.uk/Id/ods-organization-code",
                "value": "Y90001",
            }
        }
    ]
    assert encounter["id"] == resource_id("community-zc1", "Encounter", "ZC1-1")
    assert encounter["subject"] == {"reference": f"Patient/{patient['id']}"}
    assert encounter["period"] == {"start": "2024-07-04T17:54:00+01:00"}  # BST
    assert encounter["status"] == "finished"
    assert encounter["class"]["code"] == "HH"
    assert encounter["participant"] == [
        {
            "type": [{"text": "Community Nurse"}],
            "individual": {
                "identifier": {
                    "system": "https://fhir.hl7.org.uk/Id/nmc-number",
                    "value": "61B0501E",
                }
            },
        }
    ]
    assert encounter["meta"]["source"].endswith("/feed/community-zc1")
    assert encounter["meta"]["tag"][0]["code"] == "community"
    assert set(gp.keys("Encounter")) == set(gp.keys("Patient")) == {"9434765919"}


async def test_bad_rows_are_reported_and_good_rows_still_processed(gp: Any) -> None:
    body = extract(
        row(),  # row 1
        row(Contact_ID="ZC1-2", Date_of_Birth="31/02/1937"),  # row 2: no such date
        row(Contact_ID="ZC1-3", Attendance="Maybe"),  # row 3: no translation
        row(Contact_ID="ZC1-4", NHS_Number="943 476 5918"),  # row 4: check digit
        row(Contact_ID="", Local_Patient_ID="C009"),  # row 5: no row id
        row(Contact_ID="ZC1-6", Local_Patient_ID="C006", NHS_Number=""),  # row 6: fine
    )
    response = await gp.csv(body)
    assert response.status_code == 200
    report = response.json()
    assert (report["rows"], report["accepted"], report["refused"]) == (6, 2, 4)
    errors = {e["row"]: e for e in report["errors"]}
    assert sorted(errors) == [2, 3, 4, 5]
    assert errors[2]["line"] == 3
    assert "'31/02/1937' is not a date in the format '%d/%m/%Y'" in str(errors[2])
    assert errors[2]["issues"][0]["expression"] == ["Patient.birthDate"]
    assert "'Maybe' has no translation" in str(errors[3])
    assert errors[3]["issues"][0]["expression"] == ["Encounter.status"]
    assert "not a valid NHS number" in str(errors[4])
    assert "(the row's id) is blank" in str(errors[5])
    assert {e["id"] for e in gp.resources("Encounter")} == {
        resource_id("community-zc1", "Encounter", "ZC1-1"),
        resource_id("community-zc1", "Encounter", "ZC1-6"),
    }
    # each refused row is kept with the header, as CSV
    assert len(gp.dead) == 4
    first = gp.dead[0].value.decode()
    assert first.startswith(COMMUNITY_HEADER)
    assert "31/02/1937" in first
    assert gp.dead[0].headers["source"] == "community-zc1"


async def test_an_extract_with_no_good_row_is_refused(gp: Any) -> None:
    response = await gp.csv(extract(row(Attendance="Maybe")))
    assert response.status_code == 422
    outcome = response.json()
    assert outcome["resourceType"] == "OperationOutcome"
    assert "row 1 (line 2)" in outcome["issue"][1]["diagnostics"]


async def test_the_same_extract_twice_publishes_nothing_new(gp: Any) -> None:
    body = (DATA / "community-zc1" / "community-zc1-2024-04-02.csv").read_bytes()
    first = (await gp.csv(body)).json()
    assert first["published"] > 0
    again = (await gp.csv(body)).json()
    assert again["published"] == 0
    assert again["unchanged"] == first["published"] + first["unchanged"]
    changed = (await gp.csv(body.replace(b"Attended", b"DNA", 1))).json()
    assert changed["published"] == 1  # the one encounter that changed


@pytest.mark.parametrize("feed", [COMMUNITY, MENTAL_HEALTH, SOCIAL])
async def test_every_synthetic_extract_is_taken(gp: Any, feed: Feed) -> None:
    for path in sorted((DATA / feed.id).glob("*.csv")):
        response = await gp.csv(path.read_bytes(), feed=feed, name=path.name)
        assert response.status_code == 200, response.text
        report = response.json()
        assert report["refused"] == 0, report["errors"]
    assert gp.published


async def test_mental_health_codes_and_extensions(gp: Any) -> None:
    path = DATA / "mh-zm1" / "mh-zm1-2024-04-03.csv"
    assert (await gp.csv(path.read_bytes(), feed=MENTAL_HEALTH)).status_code == 200
    encounter = gp.resources("Encounter")[0]
    [cpa] = encounter["extension"]
    assert cpa["url"].endswith("/care-programme-approach")
    assert isinstance(cpa["valueBoolean"], bool)
    assert encounter["serviceType"]["text"] in ("Community mental health team", "Memory service")
    assert gp.resources("Patient")[0]["gender"] in ("male", "female")


async def test_social_care_packages_and_blank_nhs_numbers(gp: Any) -> None:
    header = (
        "Package ID,Record Type,Record Date,Person ID,NHS No,Surname,First Name,Date of Birth,"
        "Service Type,Service Start Date,Service End Date,Planned Hours Per Week"
    )
    new = "ZS1-9-1,New,01-Apr-2024,ZS19,9434765919,Das,Stan,04-Aug-1934,Home Care,20-May-2021,,14"
    ended = (
        "ZS1-9-1,Ended,08-Apr-2024,ZS19,,Das,Stan,04-Aug-1934,Home Care,20-May-2021,07-Apr-2024,"
    )
    first = await gp.csv(f"{header}\r\n{new}\r\n".encode(), feed=SOCIAL)
    assert first.status_code == 200, first.text
    second = await gp.csv(f"{header}\r\n{ended}\r\n".encode(), feed=SOCIAL)
    assert second.status_code == 200, second.text
    episodes = gp.resources("EpisodeOfCare")
    assert [e["status"] for e in episodes] == ["active", "finished"]
    assert {e["id"] for e in episodes} == {resource_id("social-zs1", "EpisodeOfCare", "ZS1-9-1")}
    assert episodes[0]["extension"][0]["valueDecimal"] == 14
    assert episodes[1]["period"] == {"start": "2021-05-20", "end": "2024-04-07"}
    assert episodes[1]["meta"]["lastUpdated"] == "2024-04-08T00:00:00+01:00"
    # the second extract left the NHS number blank: the patient keeps it, and its key
    assert gp.keys("EpisodeOfCare") == ["9434765919", "9434765919"]
    patients = gp.resources("Patient")
    assert len(patients) == 1  # unchanged, so not published again
    assert {"system": NHS_NUMBER_SYSTEM, "value": "9434765919"} in patients[0]["identifier"]


async def test_rows_of_one_patient_make_one_patient(gp: Any) -> None:
    body = extract(row(), row(Contact_ID="ZC1-2", NHS_Number=""), row(Contact_ID="ZC1-3"))
    report = (await gp.csv(body)).json()
    assert report["resources"] == {"Encounter": 3, "Patient": 1}
    [patient] = gp.resources("Patient")
    assert patient["identifier"][0] == {"system": NHS_NUMBER_SYSTEM, "value": "9434765919"}


async def test_a_header_without_the_mapped_columns_is_refused(gp: Any) -> None:
    body = extract(row()).replace(b"Attendance", b"Outcome", 1)
    response = await gp.csv(body)
    assert response.status_code == 422
    assert "'Attendance'" in response.json()["issue"][0]["diagnostics"]


def edit_mapping(gp: Any, old: str | None, new: str = "") -> Path:
    """Change (or with ``old`` None, remove) the community feed's mapping file."""
    path = Path(gp.settings.mapping_dir(), "community-zc1.yaml")
    if old is None:
        path.unlink()
    else:
        path.write_text(path.read_text().replace(old, new))
    return path


async def test_a_feed_without_a_mapping_is_refused(gp: Any) -> None:
    edit_mapping(gp, None)
    response = await gp.csv(extract(row()))
    assert response.status_code == 422
    assert "no CSV mapping is configured" in response.json()["issue"][0]["diagnostics"]


async def test_a_broken_mapping_is_a_clear_error(gp: Any) -> None:
    path = edit_mapping(gp, "Encounter.status", "Encounter.state")
    response = await gp.csv(extract(row()))
    assert response.status_code == 500
    [issue] = response.json()["issue"]
    assert "Encounter has no element 'state'" in issue["diagnostics"]
    assert str(path) in issue["diagnostics"]
    assert gp.published == []


async def test_a_mapping_for_another_organisation_is_refused(gp: Any) -> None:
    edit_mapping(gp, "ods: ZC1", "ods: ZZ9")
    response = await gp.csv(extract(row()))
    assert response.status_code == 500
    assert "not the feed's ODS code" in response.json()["issue"][0]["diagnostics"]


async def test_csv_needs_a_csv_feeds_token_and_fhir_a_fhir_feeds(gp: Any) -> None:
    as_fhir_feed = await gp.client.post(
        "/csv", content=extract(row()), headers=gp.headers("text/csv")
    )
    assert as_fhir_feed.status_code == 403
    bundle = {"resourceType": "Bundle", "type": "batch", "entry": []}
    as_csv_feed = await gp.client.post(
        "/fhir", content=orjson.dumps(bundle), headers=gp.headers(feed=COMMUNITY)
    )
    assert as_csv_feed.status_code == 403
    wrong_type = await gp.client.post(
        "/csv", content=b"{}", headers=gp.headers("application/json", feed=COMMUNITY)
    )
    assert wrong_type.status_code == 415


async def test_a_token_for_another_organisation_is_refused(gp: Any) -> None:
    token = gp.token(COMMUNITY, org="RR8")
    response = await gp.client.post(
        "/csv",
        content=extract(row()),
        headers={"Authorization": f"Bearer {token}", "Content-Type": "text/csv"},
    )
    assert response.status_code == 403
    assert "organisation 'RR8'" in response.json()["issue"][0]["diagnostics"]


async def test_an_extract_that_is_not_utf8_is_refused(gp: Any) -> None:
    response = await gp.csv(extract(row(Surname="M\xfcLLER")).replace(b"\xc3\xbc", b"\xfc"))
    assert response.status_code == 400
    assert "utf-8" in response.json()["issue"][0]["diagnostics"]


async def test_the_live_generators_extracts_are_taken(gp_factory: Any, tmp_path: Path) -> None:
    """Whatever the synthetic-population generator writes today (its mappings unchanged):
    every row is taken but those it corrupted on purpose (NHS numbers with a wrong check
    digit)."""
    from joinedup.synth.generate import generate
    from joinedup.synth.noise import Noise

    world = tmp_path / "world"
    generate(world, patients=300, seed=5, years=0.5, workers=1, noise=Noise())
    feeds = [Feed.model_validate(f) for f in orjson.loads((world / "feeds.json").read_bytes())]
    csv_feeds = [f for f in feeds if f.kind == FeedKind.CSV]
    mappings = tmp_path / "mappings"
    mappings.mkdir()
    registry = FeedRegistry(tmp_path / "feeds.json")
    for feed in csv_feeds:
        registry.add(feed)
        source = world / "csv" / feed.id / "mapping.yaml"
        if source.exists():
            shutil.copy(source, mappings / f"{feed.id}.yaml")
    rows = refused = 0
    async with gp_factory() as gp:
        for feed in csv_feeds:
            for path in sorted((world / "csv" / feed.id).glob("*.csv")):
                response = await gp.csv(path.read_bytes(), feed=feed, name=path.name)
                if response.status_code == 422:  # a one-row extract whose row was refused
                    issues = response.json()["issue"][1:]
                    assert all("NHS number" in i["diagnostics"] for i in issues), issues
                    refused += 1
                    continue
                assert response.status_code == 200, response.text
                report = response.json()
                rows += report["rows"]
                refused += report["refused"]
                for error in report["errors"]:
                    assert all("NHS number" in i["diagnostics"] for i in error["issues"]), error
    assert rows > 50
    assert refused <= rows * 0.05
