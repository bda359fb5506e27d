"""Receiving a provider's Bundle: check it, normalise it, publish it, answer for each entry.

* ``transaction``: all or nothing. Every entry is validated first; one bad entry rejects the
  whole bundle (422, every problem listed) and nothing is published.
* ``batch``: entries stand alone; bad ones get their own 4xx outcome, good ones are published.
* ``collection`` (a GP structured-record extract): like a transaction, each entry an update.

Whatever is rejected is kept, as sent, on the dead-letter topic.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson

from fhir_common.auth import Principal
from fhir_common.errors import FhirError, Issue, operation_outcome
from fhir_common.events import Message, event_headers, fhir_message
from fhir_common.feeds import Feed
from fhir_common.patient_directory import keys_of
from fhir_common.service import ServiceContext
from fhir_common.validation import parse_json, validate_resource
from ingest_gp.normalise import Entry, canonical_nhs_numbers, normalise
from ingest_gp.patients import key_for, own_key, patient_reference
from ingest_gp.tables import patient_keys

ACCEPTED_TYPES = ("transaction", "batch", "collection")
RESPONSE_TYPE = {
    "transaction": "transaction-response",
    "batch": "batch-response",
    "collection": "batch-response",
}
SUPPORTED_METHODS = ("POST", "PUT")


@dataclass
class Received:
    """A checked bundle: what to publish, what was refused, and the answer for each entry."""

    bundle_type: str
    accepted: list[Entry] = field(default_factory=list)
    refused: dict[int, tuple[int, list[Issue]]] = field(default_factory=dict)


def read_bundle(body: bytes) -> dict[str, Any]:
    data = parse_json(body)
    if not isinstance(data, dict) or data.get("resourceType") != "Bundle":
        found = data.get("resourceType") if isinstance(data, dict) else type(data).__name__
        raise FhirError.single(400, "invalid", f"expected a Bundle, got {found!r}", ["Bundle"])
    if data.get("type") not in ACCEPTED_TYPES:
        raise FhirError.single(
            400,
            "not-supported",
            f"Bundle.type must be one of {', '.join(ACCEPTED_TYPES)}; got {data.get('type')!r}",
            ["Bundle.type"],
        )
    if not isinstance(data.get("entry", []), list):
        raise FhirError.single(400, "structure", "Bundle.entry must be a list", ["Bundle.entry"])
    return data


def check_entries(bundle: Mapping[str, Any], principal: Principal) -> Received:
    received = Received(bundle_type=str(bundle["type"]))
    for index, raw in enumerate(bundle.get("entry", [])):
        entry, status, issues = _check_entry(index, raw, received.bundle_type, principal)
        if entry is not None:
            received.accepted.append(entry)
        else:
            received.refused[index] = (status, issues)
    if received.bundle_type != "batch" and received.refused:
        status = max(s for s, _ in received.refused.values())
        raise FhirError(status, [i for _, issues in received.refused.values() for i in issues])
    return received


def _check_entry(
    index: int, raw: Any, bundle_type: str, principal: Principal
) -> tuple[Entry | None, int, list[Issue]]:
    path = f"Bundle.entry[{index}]"
    if not isinstance(raw, dict):
        return None, 422, [Issue("structure", "entry is not a JSON object", expression=[path])]
    method = _method(raw, bundle_type)
    if method not in SUPPORTED_METHODS:
        issue = Issue(
            "not-supported",
            f"request method {method!r} is not supported (POST or PUT)",
            expression=[f"{path}.request.method"],
        )
        return None, 422, [issue]
    if not isinstance(raw.get("resource"), dict):
        return None, 422, [Issue("required", "entry has no resource", expression=[path])]
    # A copy, so that a refused entry is dead-lettered exactly as it was sent.
    resource = copy.deepcopy(raw["resource"])
    canonical_nhs_numbers(resource)  # "943 476 5919" is a valid NHS number, written for people
    issues = validate_resource(resource, path=f"{path}.resource")
    if issues:
        return None, 422, issues
    permission = "c" if method == "POST" else "u"
    if not principal.allows(resource["resourceType"], permission):
        issue = Issue(
            "forbidden",
            f"this token may not {method} {resource['resourceType']}",
            expression=[path],
        )
        return None, 403, [issue]
    full_url = raw.get("fullUrl") if isinstance(raw.get("fullUrl"), str) else None
    return Entry(index, dict(resource), full_url, method), 0, []


def _method(raw: Mapping[str, Any], bundle_type: str) -> str:
    if bundle_type == "collection":
        return "PUT"
    request = raw.get("request")
    return str(request.get("method", "")).upper() if isinstance(request, dict) else ""


def patients_in(entries: Sequence[Entry], feed: Feed) -> dict[str, str]:
    """``Patient/<id>`` → key, for the patients the (normalised) bundle itself carries."""
    return {
        f"Patient/{e.resource['id']}": own_key(e.resource, feed)
        for e in entries
        if e.resource_type == "Patient"
    }


def referenced_patients(entries: Sequence[Entry]) -> set[str]:
    return {ref for e in entries if (ref := patient_reference(e.resource))}


def to_messages(
    entries: Sequence[Entry], feed: Feed, patient_keys: Mapping[str, str]
) -> list[Message]:
    """Wrap each normalised entry in its ``fhir.<Type>`` message, keyed by its patient."""
    headers = event_headers(source=feed.id, setting=feed.setting)
    return [
        fhir_message(e.resource, key_for(e.resource, feed, patient_keys), headers) for e in entries
    ]


def response_bundle(received: Received, total: int) -> dict[str, Any]:
    accepted = {e.index: e for e in received.accepted}
    entries: list[dict[str, Any]] = []
    for index in range(total):
        if index in accepted:
            entry = accepted[index]
            status = "201 Created" if entry.method == "POST" else "200 OK"
            location = f"{entry.resource_type}/{entry.resource['id']}"
            entries.append({"response": {"status": status, "location": location}})
        else:
            code, issues = received.refused[index]
            entries.append(
                {"response": {"status": str(code), "outcome": operation_outcome(issues)}}
            )
    return {"resourceType": "Bundle", "type": RESPONSE_TYPE[received.bundle_type], "entry": entries}


async def receive_bundle(
    ctx: ServiceContext, feed: Feed, principal: Principal, body: bytes
) -> dict[str, Any]:
    """Check, normalise and publish one pushed Bundle; return the response Bundle."""
    try:
        bundle = read_bundle(body)
        received = check_entries(bundle, principal)
    except FhirError as error:
        await _keep_refused(ctx, feed, body, str(error))
        raise
    normalise(received.accepted, feed)
    keys = patients_in(received.accepted, feed)
    elsewhere = referenced_patients(received.accepted) - keys.keys()
    if elsewhere and ctx.db:
        async with ctx.db.transaction() as session:
            keys |= await keys_of(session, patient_keys, elsewhere)
    await ctx.bus.publish(to_messages(received.accepted, feed, keys))
    for index, (_, issues) in received.refused.items():
        entry = orjson.dumps(bundle["entry"][index])
        await _keep_refused(ctx, feed, entry, "; ".join(i.diagnostics for i in issues))
    return response_bundle(received, len(bundle.get("entry", [])))


async def _keep_refused(ctx: ServiceContext, feed: Feed, original: bytes, error: str) -> None:
    await ctx.bus.dead_letter(
        value=original, source=feed.id, error=error, service=ctx.name, origin="POST /fhir"
    )
