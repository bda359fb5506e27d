"""The event envelope of DESIGN.md "Topics": topic names, headers, the message."""

from __future__ import annotations

import dataclasses
import re
import uuid
from datetime import UTC, datetime, timedelta

import orjson
import pytest

from fhir_common.bus import Subscription, is_permanent
from fhir_common.events import (
    DEADLETTER,
    FHIR_TOPIC_PATTERN,
    RECORD_CHANGES,
    Header,
    Message,
    event_headers,
    fhir_message,
    fhir_topic,
    now_iso,
    resource_type_of_topic,
)
from fhir_common.observability import current_traceparent, new_traceparent, trace_id

ISO_MILLIS_Z = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$")


async def _noop(batch: object) -> None:
    return None


def test_topic_names_follow_the_design() -> None:
    assert RECORD_CHANGES == "record.changes"
    assert DEADLETTER == "deadletter"
    assert fhir_topic("Encounter") == "fhir.Encounter"
    assert fhir_topic("CarePlan") == "fhir.CarePlan"


@pytest.mark.parametrize("resource_type", ["Encounter", "Condition", "CarePlan", "Patient"])
def test_resource_type_round_trip(resource_type: str) -> None:
    assert resource_type_of_topic(fhir_topic(resource_type)) == resource_type


@pytest.mark.parametrize("topic", [RECORD_CHANGES, DEADLETTER, "fhirEncounter", "Encounter"])
def test_resource_type_of_other_topics(topic: str) -> None:
    with pytest.raises(ValueError, match="not a fhir"):
        resource_type_of_topic(topic)


@pytest.mark.parametrize(
    ("topic", "matches"),
    [
        ("fhir.Encounter", True),
        ("fhir.CarePlan", True),
        ("fhir.", False),
        ("fhir.Care.Plan", False),
        ("fhir.Encounter2", False),
        ("xfhir.Encounter", False),
        ("fhir.Encounter-dlq", False),
        (RECORD_CHANGES, False),
        (DEADLETTER, False),
    ],
)
def test_fhir_topic_pattern(topic: str, matches: bool) -> None:
    assert (re.fullmatch(FHIR_TOPIC_PATTERN, topic) is not None) is matches
    subscription = Subscription("g", _noop, "svc", pattern=FHIR_TOPIC_PATTERN)
    assert subscription.matches(topic) is matches


def test_event_headers_carry_what_every_message_needs() -> None:
    traceparent = new_traceparent()
    headers = event_headers(source="gp-feed-1", setting="primary", traceparent=traceparent)
    assert set(headers) == {
        Header.EVENT_ID,
        Header.SOURCE,
        Header.SETTING,
        Header.OCCURRED_AT,
        Header.TRACEPARENT,
    }
    assert headers[Header.EVENT_ID] == str(uuid.UUID(headers[Header.EVENT_ID]))
    assert headers[Header.SOURCE] == "gp-feed-1"
    assert headers[Header.SETTING] == "primary"
    assert headers[Header.TRACEPARENT] == traceparent
    assert ISO_MILLIS_Z.match(headers[Header.OCCURRED_AT])
    assert all(isinstance(v, str) for v in headers.values())


def test_event_ids_are_unique_and_occurred_at_can_be_given() -> None:
    many = [event_headers(source="s", setting="acute") for _ in range(100)]
    assert len({h[Header.EVENT_ID] for h in many}) == 100
    given = event_headers(source="s", setting="acute", occurred_at="2024-01-02T03:04:05.000Z")
    assert given[Header.OCCURRED_AT] == "2024-01-02T03:04:05.000Z"
    # every message carries a trace (DESIGN.md): a new one when nothing is being traced
    assert trace_id(given[Header.TRACEPARENT]) is not None


def test_headers_continue_the_current_trace() -> None:
    parent = new_traceparent()
    token = current_traceparent.set(parent)
    try:
        headers = event_headers(source="s", setting="acute")
    finally:
        current_traceparent.reset(token)
    assert trace_id(headers[Header.TRACEPARENT]) == trace_id(parent)
    assert headers[Header.TRACEPARENT] != parent  # a child span, not the same one


def test_header_names() -> None:
    assert (Header.EVENT_ID, Header.SOURCE, Header.SETTING) == ("event-id", "source", "setting")
    assert (Header.OCCURRED_AT, Header.TRACEPARENT) == ("occurred-at", "traceparent")
    assert (Header.ERROR, Header.SERVICE, Header.ORIGIN) == ("error", "service", "origin")


def test_now_iso_is_utc_with_milliseconds() -> None:
    stamp = now_iso()
    assert ISO_MILLIS_Z.match(stamp)
    parsed = datetime.fromisoformat(stamp.replace("Z", "+00:00"))
    assert abs(datetime.now(UTC) - parsed) < timedelta(seconds=5)


def test_fhir_message() -> None:
    encounter = {
        "resourceType": "Encounter",
        "id": "e1",
        "reasonCode": [{"coding": [{"system": "http://snomed.info/sct", "code": "38341003"}]}],
    }
    headers = event_headers(source="acute-feed", setting="acute")
    message = fhir_message(encounter, "9434765919", headers)
    assert message.topic == "fhir.Encounter"
    assert message.key == "9434765919"
    assert message.headers == headers
    assert message.json() == encounter
    assert orjson.loads(message.value) == encounter
    assert message.partition is None
    assert message.offset is None


def test_fhir_message_needs_a_resource_type() -> None:
    with pytest.raises(KeyError) as caught:
        fhir_message({"id": "x"}, "key", {})
    assert is_permanent(caught.value)  # bad data: dead-lettered, not retried


def test_message_origin_and_immutability() -> None:
    message = Message("fhir.Condition", "k", b"{}", {}, partition=2, offset=41)
    assert message.origin == "fhir.Condition/2/41"
    with pytest.raises(dataclasses.FrozenInstanceError):
        message.key = "other"  # type: ignore[misc]


def test_bad_json_is_a_permanent_error() -> None:
    message = Message("fhir.Condition", "k", b'{"resourceType":')
    with pytest.raises(orjson.JSONDecodeError) as caught:
        message.json()
    assert is_permanent(caught.value)
