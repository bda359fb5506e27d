"""The registry of provider feeds (fhir_common.feeds) and who may push through it."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from pydantic import ValidationError

from fhir_common.auth import Principal, parse_scopes
from fhir_common.errors import FhirError
from fhir_common.feeds import Feed, FeedKind, FeedRegistry, authorise_push

GP = Feed(id="gp-a81001", kind=FeedKind.FHIR, ods="A81001", setting="primary")
ACUTE = Feed(
    id="acute-rr8",
    kind=FeedKind.HL7V2,
    ods="RR8",
    setting="acute",
    sender="RR8",
    description="Leeds Teaching Hospitals PAS",
)
SOCIAL = Feed(id="social-care.x", kind=FeedKind.CSV, ods="Y12345", setting="social-care")


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "conf" / "feeds.json"


# --- the registry --------------------------------------------------------------------------------


def test_an_absent_file_is_an_empty_registry(path: Path) -> None:
    registry = FeedRegistry(path)
    assert registry.all() == []
    assert registry.get("gp-a81001") is None


def test_add_get_all(path: Path) -> None:
    registry = FeedRegistry(path)
    for feed in (SOCIAL, GP, ACUTE):
        registry.add(feed)
    assert registry.get("gp-a81001") == GP
    assert registry.get("acute-rr8") == ACUTE
    assert registry.get("nope") is None
    assert [f.id for f in registry.all()] == ["acute-rr8", "gp-a81001", "social-care.x"]
    # the file is plain JSON that people can read and edit
    written = json.loads(path.read_text())
    assert [f["id"] for f in written] == ["acute-rr8", "gp-a81001", "social-care.x"]
    assert written[0]["kind"] == "hl7v2"


def test_add_replaces_a_feed_of_the_same_id(path: Path) -> None:
    registry = FeedRegistry(path)
    registry.add(GP)
    moved = GP.model_copy(update={"setting": "community", "description": "now community"})
    registry.add(moved)
    assert registry.all() == [moved]


def test_by_sender_finds_hl7v2_feeds_only(path: Path) -> None:
    registry = FeedRegistry(path)
    registry.add(ACUTE)
    # a FHIR feed that happens to carry a sender is not found by MSH-4
    registry.add(Feed(id="fhir-rr9", kind=FeedKind.FHIR, ods="RR9", setting="acute", sender="RR9"))
    assert registry.by_sender("RR8") == ACUTE
    assert registry.by_sender("RR9") is None
    assert registry.by_sender("RX1") is None


def test_a_running_registry_sees_feeds_added_by_another_instance(path: Path) -> None:
    running = FeedRegistry(path)
    assert running.get("gp-a81001") is None  # read (and cached) before the file exists
    FeedRegistry(path).add(GP)  # e.g. `joinedup feeds add` in another process
    assert running.get("gp-a81001") == GP
    FeedRegistry(path).add(ACUTE)
    assert running.by_sender("RR8") == ACUTE
    FeedRegistry(path).add(GP.model_copy(update={"ods": "A81002"}))  # same size, new content
    assert running.get("gp-a81001") is not None
    assert running.get("gp-a81001").ods == "A81002"  # type: ignore[union-attr]


def test_a_file_edited_by_hand_is_read_again(path: Path) -> None:
    registry = FeedRegistry(path)
    registry.add(GP)
    assert registry.get("gp-a81001") == GP
    data = json.loads(path.read_text())
    data[0]["description"] = "edited by hand"
    path.write_text(json.dumps(data))
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))
    found = registry.get("gp-a81001")
    assert found is not None
    assert found.description == "edited by hand"


def test_adding_leaves_no_temporary_files(path: Path) -> None:
    registry = FeedRegistry(path)
    registry.add(GP)
    registry.add(ACUTE)
    assert sorted(p.name for p in path.parent.iterdir()) == ["feeds.json"]


# --- what a feed may be --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "changes",
    [
        {"ods": "a81001"},  # lower case
        {"ods": "A8"},  # too short
        {"ods": "A81-001"},
        {"ods": ""},
        {"setting": "hospital"},
        {"setting": "Primary"},
        {"id": "has space"},
        {"id": "-leading-dash"},
        {"id": ""},
        {"id": "x" * 65},
        {"kind": "xml"},
    ],
)
def test_invalid_feeds_are_rejected(changes: dict[str, str]) -> None:
    fields = {**GP.model_dump(), **changes}
    with pytest.raises(ValidationError):
        Feed(**fields)


@pytest.mark.parametrize(
    "setting", ["primary", "acute", "community", "mental-health", "social-care"]
)
def test_every_care_setting_of_the_design_is_a_valid_setting(setting: str) -> None:
    assert Feed(id="f", kind=FeedKind.FHIR, ods="RR8", setting=setting).setting == setting


def test_a_registry_file_with_an_invalid_feed_is_refused(path: Path) -> None:
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps([{**GP.model_dump(mode="json"), "ods": "lower"}]))
    with pytest.raises(ValidationError):
        FeedRegistry(path).all()


# --- who may push --------------------------------------------------------------------------------


def principal(feed: str | None) -> Principal:
    return Principal(subject=f"feed:{feed}", scopes=parse_scopes("system/*.cu"), feed=feed)


@pytest.fixture
def registry(path: Path) -> FeedRegistry:
    registry = FeedRegistry(path)
    registry.add(GP)
    registry.add(ACUTE)
    return registry


def test_a_registered_feed_may_push_its_kind(registry: FeedRegistry) -> None:
    assert authorise_push(registry, principal("gp-a81001"), {FeedKind.FHIR}) == GP
    assert authorise_push(registry, principal("acute-rr8"), {FeedKind.HL7V2}) == ACUTE
    assert authorise_push(registry, principal("gp-a81001"), {FeedKind.FHIR, FeedKind.CSV}) == GP


@pytest.mark.parametrize(
    ("feed", "kinds", "says"),
    [
        (None, {FeedKind.FHIR}, "only a provider feed's token may push"),
        ("", {FeedKind.FHIR}, "only a provider feed's token may push"),
        ("gp-unknown", {FeedKind.FHIR}, "'gp-unknown' is not registered"),
        ("acute-rr8", {FeedKind.FHIR}, "is a hl7v2 feed; this endpoint takes fhir"),
        ("gp-a81001", {FeedKind.HL7V2}, "is a fhir feed; this endpoint takes hl7v2"),
    ],
)
def test_pushes_that_are_refused(
    registry: FeedRegistry, feed: str | None, kinds: set[FeedKind], says: str
) -> None:
    with pytest.raises(FhirError) as info:
        authorise_push(registry, principal(feed), kinds)
    assert info.value.status == 403
    [issue] = info.value.outcome()["issue"]
    assert issue["code"] == "forbidden"
    assert says in issue["diagnostics"]


def test_a_feed_removed_from_the_file_may_no_longer_push(registry: FeedRegistry) -> None:
    assert authorise_push(registry, principal("gp-a81001"), {FeedKind.FHIR}) == GP
    registry.path.write_text(json.dumps([ACUTE.model_dump(mode="json")]))
    with pytest.raises(FhirError) as info:
        authorise_push(registry, principal("gp-a81001"), {FeedKind.FHIR})
    assert info.value.status == 403
