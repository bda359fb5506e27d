"""CSV mapping files (ingest_gp.csvmap): the synthetic population's mapping.yaml files load as
they are; a broken mapping is refused with every problem, each saying where it is."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from ingest_gp.csvmap import MappingError, check, load_file, load_text, main

DATA = Path(__file__).parent / "data" / "csv"
FEEDS = ("community-zc1", "mh-zm1", "social-zs1")


@pytest.mark.parametrize("feed", FEEDS)
def test_the_synthetic_feeds_mappings_load_unchanged(feed: str) -> None:
    mapping = load_file(DATA / feed / "mapping.yaml")
    assert mapping.feed == feed
    assert mapping.row_id.columns
    assert mapping.columns() <= set(
        (next((DATA / feed).glob("*.csv")).read_text().splitlines()[0]).split(",")
    )


def test_what_a_mapping_says_is_understood() -> None:
    mapping = load_file(DATA / "mh-zm1" / "mapping.yaml")
    assert (mapping.resource, mapping.patient_element) == ("Encounter", "subject")
    cpa = next(e for e in mapping.elements if "care-programme-approach" in e.target.path)
    assert cpa.url == "https://fhir.joinedup.nhs.uk/StructureDefinition/care-programme-approach"
    assert cpa.map == {"Y": True, "N": False}
    assert cpa.target.leaf.type == "boolean"
    social = load_file(DATA / "social-zs1" / "mapping.yaml")
    assert social.patient_element == "patient"  # EpisodeOfCare.patient


def test_the_live_generator_writes_mappings_that_load(tmp_path: Path) -> None:
    """The generator (joinedup.synth) is written by others at the same time: its output of the
    day must load, and this says so as soon as it does not."""
    from joinedup.synth.generate import generate
    from joinedup.synth.noise import Noise

    generate(tmp_path, patients=200, seed=3, years=0.25, workers=1, noise=Noise())
    files = sorted(tmp_path.glob("csv/*/mapping.yaml"))
    assert files
    for path in files:
        assert load_file(path).feed == path.parent.name


def _base() -> dict:
    return yaml.safe_load((DATA / "community-zc1" / "mapping.yaml").read_text())


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        (lambda m: m.pop("resource"), "resource: None is not a FHIR R4 resource type"),
        (lambda m: m.update(resource="Encounterz"), "'Encounterz' is not a FHIR R4 resource"),
        (lambda m: m.pop("row_id"), "row_id: required"),
        (lambda m: m.update(colour="blue"), "colour: not a mapping key"),
        (
            lambda m: m["elements"].append({"path": "Encounter.foo", "column": "Team"}),
            "elements[7].path: Encounter has no element 'foo'",
        ),
        (
            lambda m: m["elements"].append({"path": "Encounter.period", "column": "Team"}),
            "is a Period; map a column to one of its elements",
        ),
        (
            lambda m: m["elements"][0].update(format="%Q"),
            "elements[0].format: '%Q' is not a strptime format",
        ),
        (
            lambda m: m["elements"][3].update(format="%d"),
            "elements[3].format: Encounter.serviceType.text is a string, not a date",
        ),
        (
            lambda m: m["elements"][1].update(value="x"),
            "elements[1]: needs exactly one of column, columns or value",
        ),
        (
            lambda m: m["elements"][1].update(colum="Attendance"),
            "elements[1].colum: not understood",
        ),
        (
            lambda m: m["elements"].append(
                {"path": "Encounter.extension[x].valueBoolean", "column": "Team"}
            ),
            "elements[7].url: Encounter.extension[x].valueBoolean names an extension",
        ),
        (
            lambda m: m["elements"].append(
                {"path": "Encounter.length.value", "column": "Team", "map": {"a": "b"}}
            ),
            "elements[7].map['a']: 'b' is not a number",
        ),
        (
            lambda m: m["patient"].pop("local_id") and m["patient"].pop("nhs_number"),
            "needs local_id",
        ),
        (lambda m: m["patient"].update(shoe_size={"column": "x"}), "patient.shoe_size"),
        (lambda m: m["format"].update(timezone="Mars/Olympus"), "not a known time zone"),
        (lambda m: m["format"].update(delimiter=";;"), "format.delimiter: must be one character"),
        (lambda m: m["format"].update(header=False), "must start with a header row"),
        (lambda m: m["format"].update(encoding="klingon"), "not a known text encoding"),
        (
            lambda m: m["patient"]["nhs_number"].update(system="urn:x"),
            "patient.nhs_number.system",
        ),
    ],
)
def test_a_broken_mapping_names_its_problem(change, problem: str) -> None:  # type: ignore[no-untyped-def]
    data = _base()
    change(data)
    with pytest.raises(MappingError) as caught:
        check(data, "test.yaml")
    assert any(problem in p for p in caught.value.problems), caught.value.problems


def test_every_problem_is_reported_at_once() -> None:
    data = _base()
    data["resource"] = "Encounter"
    data["elements"][0]["path"] = "Encounter.nope"
    data["elements"][1]["map"] = "not a map"
    data["format"]["quote"] = ""
    with pytest.raises(MappingError) as caught:
        check(data, "test.yaml")
    assert len(caught.value.problems) == 3


def test_yaml_errors_say_where() -> None:
    with pytest.raises(MappingError) as caught:
        load_text("feed: x\nresource: [Encounter\n", "bad.yaml")
    assert "line 3" in caught.value.problems[0] or "line 2" in caught.value.problems[0]
    with pytest.raises(MappingError):
        load_text("- just\n- a list\n", "list.yaml")


def test_the_checker_runs_from_the_command_line(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    broken = tmp_path / "broken.yaml"
    broken.write_text("feed: x\nresource: Nothing\n")
    assert main([str(DATA / "mh-zm1" / "mapping.yaml"), str(broken)]) == 1
    out = capsys.readouterr().out
    assert "mapping.yaml: ok" in out
    assert "broken.yaml: not usable" in out
    assert "resource: 'Nothing'" in out
