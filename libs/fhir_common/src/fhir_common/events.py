"""The event envelope of DESIGN.md: topic names, header names, and the message we carry.

A ``Message`` is what crosses the bus in either implementation: a topic, a key (the patient
key, so that everything about one person stays in order), raw bytes, and string headers.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime

import orjson

from fhir_common.observability import child_traceparent, current_traceparent

RECORD_CHANGES = "record.changes"
DEADLETTER = "deadletter"
FHIR_TOPIC_PREFIX = "fhir."
FHIR_TOPIC_PATTERN = r"^fhir\.[A-Za-z]+$"


class Header:
    EVENT_ID = "event-id"
    SOURCE = "source"
    SETTING = "setting"
    OCCURRED_AT = "occurred-at"
    TRACEPARENT = "traceparent"
    # dead-letter only
    ERROR = "error"
    SERVICE = "service"
    ORIGIN = "origin"


def fhir_topic(resource_type: str) -> str:
    return f"{FHIR_TOPIC_PREFIX}{resource_type}"


def resource_type_of_topic(topic: str) -> str:
    if not topic.startswith(FHIR_TOPIC_PREFIX):
        raise ValueError(f"{topic} is not a fhir.<ResourceType> topic")
    return topic[len(FHIR_TOPIC_PREFIX) :]


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass(frozen=True)
class Message:
    topic: str
    key: str
    value: bytes
    headers: Mapping[str, str] = field(default_factory=dict)
    # where the bus delivered it from; None until delivered
    partition: int | None = None
    offset: int | None = None

    def json(self) -> object:
        return orjson.loads(self.value)

    @property
    def origin(self) -> str:
        return f"{self.topic}/{self.partition}/{self.offset}"


def event_headers(
    *,
    source: str,
    setting: str,
    occurred_at: str | None = None,
    traceparent: str | None = None,
) -> dict[str, str]:
    """The headers DESIGN.md requires on every message.

    Without an explicit ``traceparent`` the message continues the current trace (the HTTP
    request or message being handled) in a new span, or starts a trace of its own.
    """
    return {
        Header.EVENT_ID: str(uuid.uuid4()),
        Header.SOURCE: source,
        Header.SETTING: setting,
        Header.OCCURRED_AT: occurred_at or now_iso(),
        Header.TRACEPARENT: traceparent or child_traceparent(current_traceparent.get()),
    }


def fhir_message(resource: Mapping[str, object], key: str, headers: Mapping[str, str]) -> Message:
    resource_type = str(resource["resourceType"])
    return Message(
        topic=fhir_topic(resource_type), key=key, value=orjson.dumps(resource), headers=headers
    )


@dataclass(frozen=True)
class RecordChange:
    """A ``record.changes`` value: the record committed a new version of a resource."""

    resource_type: str
    id: str
    version_id: str
    patient: str | None
    change: str

    @classmethod
    def of(cls, message: Message) -> RecordChange:
        data = orjson.loads(message.value)
        if not isinstance(data, dict):
            raise ValueError("record.changes value is not a JSON object")
        return cls(
            resource_type=str(data["resourceType"]),
            id=str(data["id"]),
            version_id=str(data["versionId"]),
            patient=data.get("patient"),
            change=str(data["change"]),
        )
