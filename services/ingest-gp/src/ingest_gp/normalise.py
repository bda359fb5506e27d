"""Turning a provider's bundle entries into resources we publish.

* Every resource gets its deterministic id (UUIDv5 of feed|type|source id, DESIGN.md), so a
  resent bundle updates instead of duplicating.
* References between entries (``urn:uuid:`` full URLs, ``Type/local-id``, absolute URLs) are
  rewritten to the new ids.
* ``meta.source`` names the feed and a ``meta.tag`` carries the care setting.
* NHS numbers are stored in their canonical 10-digit form.
"""

from __future__ import annotations

import hashlib
import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from fhir_common.feeds import Feed
from fhir_common.identifiers import NHS_NUMBER_SYSTEM, normalise_nhs_number, resource_id

SETTING_TAG_SYSTEM = "https://fhir.joinedup.nhs.uk/CodeSystem/care-setting"
FEED_SOURCE_BASE = "https://fhir.joinedup.nhs.uk/feed/"
_RELATIVE = re.compile(r"([A-Z][A-Za-z]+)/([A-Za-z0-9\-.]{1,64})")


@dataclass
class Entry:
    index: int
    resource: dict[str, Any]
    full_url: str | None
    method: str  # POST | PUT (collection entries count as PUT: they are updates)
    fixed_id: str | None = None  # an id of ours it must keep (a conditional update's match)

    @property
    def resource_type(self) -> str:
        return str(self.resource["resourceType"])


def source_id(entry: Entry) -> str:
    """What identifies this resource in the provider's own system, as stably as we can tell."""
    if entry.resource.get("id"):
        return str(entry.resource["id"])
    if entry.full_url:
        return entry.full_url
    # No id at all: the content itself is the identity (a resend of it is the same resource).
    return hashlib.sha256(orjson.dumps(entry.resource, option=orjson.OPT_SORT_KEYS)).hexdigest()


def assign_ids(entries: list[Entry], feed: Feed) -> dict[str, str]:
    """Give each entry its deterministic id; return old reference → ``Type/new-id``."""
    renames: dict[str, str] = {}
    for entry in entries:
        old_id = entry.resource.get("id")
        new_id = entry.fixed_id or resource_id(feed.id, entry.resource_type, source_id(entry))
        new_ref = f"{entry.resource_type}/{new_id}"
        if entry.full_url:
            renames[entry.full_url] = new_ref
        if old_id:
            renames[f"{entry.resource_type}/{old_id}"] = new_ref
        entry.resource["id"] = new_id
    return renames


def rewrite_references(node: Any, renames: Mapping[str, str], feed: Feed) -> None:
    if isinstance(node, dict):
        ref = node.get("reference")
        if isinstance(ref, str):
            node["reference"] = resolve_reference(ref, renames, feed)
        for value in node.values():
            rewrite_references(value, renames, feed)
    elif isinstance(node, list):
        for item in node:
            rewrite_references(item, renames, feed)


def resolve_reference(ref: str, renames: Mapping[str, str], feed: Feed) -> str:
    """Where ``ref`` points once ids are ours.

    Entries of the same bundle are found in ``renames``. A relative reference to something not
    in the bundle (``Patient/123``, sent earlier) is mapped the same deterministic way its
    target was; one that already holds one of our ids (a UUIDv5) is left alone, as are
    contained (``#x``), ``urn:`` and external references.
    """
    if ref in renames:
        return renames[ref]
    relative = _relative(ref)
    if relative in renames:
        return renames[relative]
    match = _RELATIVE.fullmatch(ref)
    if not match or _is_ours(match.group(2)):
        return ref
    resource_type, local_id = match.groups()
    return f"{resource_type}/{resource_id(feed.id, resource_type, local_id)}"


def _is_ours(local_id: str) -> bool:
    try:
        return uuid.UUID(local_id).version == 5
    except ValueError:
        return False


def _relative(reference: str) -> str:
    """``http://host/fhir/Patient/1`` → ``Patient/1`` (a ``_history`` suffix is dropped)."""
    parts = reference.split("/_history/")[0].rstrip("/").split("/")
    return "/".join(parts[-2:]) if len(parts) >= 2 else reference


def stamp(resource: dict[str, Any], feed: Feed) -> None:
    meta = dict(resource.get("meta") or {})
    meta["source"] = f"{FEED_SOURCE_BASE}{feed.id}"
    tags = [t for t in meta.get("tag", []) if t.get("system") != SETTING_TAG_SYSTEM]
    tags.append({"system": SETTING_TAG_SYSTEM, "code": feed.setting})
    meta["tag"] = tags
    resource["meta"] = meta


def canonical_nhs_numbers(resource: dict[str, Any]) -> None:
    identifiers = resource.get("identifier")
    for identifier in identifiers if isinstance(identifiers, list) else []:
        if isinstance(identifier, dict) and identifier.get("system") == NHS_NUMBER_SYSTEM:
            normalised = normalise_nhs_number(str(identifier.get("value", "")))
            if normalised:
                identifier["value"] = normalised


def finish(entries: list[Entry], renames: Mapping[str, str], feed: Feed) -> None:
    """References rewritten to our ids, NHS numbers canonical, provenance stamped."""
    for entry in entries:
        rewrite_references(entry.resource, renames, feed)
        canonical_nhs_numbers(entry.resource)
        stamp(entry.resource, feed)


# A JSON string's content unrolled (runs of plain characters between escapes): the same
# matches as ``(?:[^"\\]|\\.)*``, at half the cost.
_REFERENCE = re.compile(rb'"reference":"([^"\\]*(?:\\.[^"\\]*)*)"')
#: Elements that name the patient a resource is about (see ``patients``).
_PATIENT_ELEMENTS = ("subject", "patient", "beneficiary", "individual", "for")


def encode(
    entry: Entry,
    renames: Mapping[str, str],
    feed: Feed,
    rewritten: dict[bytes, bytes] | None = None,
) -> bytes:
    """The entry's resource as published: stamped, as JSON, its references rewritten.

    The same result as ``finish`` then ``orjson.dumps``, but the references are rewritten in
    the JSON text (one regular expression) rather than by walking the resource, which costs
    far less. In the resource itself only the elements naming its patient are rewritten (what
    the message key is computed from).

    ``rewritten``: a cache of reference rewrites, shared by the entries of one bundle (the
    same ``renames``), whose resources mostly point at the same few patients and encounters.
    """
    resource = entry.resource
    canonical_nhs_numbers(resource)
    stamp(resource, feed)
    for element in _PATIENT_ELEMENTS:
        target = resource.get(element)
        if isinstance(target, dict) and isinstance(target.get("reference"), str):
            target["reference"] = resolve_reference(target["reference"], renames, feed)
    data = orjson.dumps(resource)
    cache = {} if rewritten is None else rewritten

    def rewrite(match: re.Match[bytes]) -> bytes:
        whole = match.group(0)
        done = cache.get(whole)
        if done is None:
            raw = match.group(1)
            ref = orjson.loads(b'"' + raw + b'"') if b"\\" in raw else raw.decode()
            new = resolve_reference(ref, renames, feed)
            done = whole if new == ref else b'"reference":' + orjson.dumps(new)
            cache[whole] = done
        return done

    return _REFERENCE.sub(rewrite, data)


def normalise(entries: list[Entry], feed: Feed) -> None:
    finish(entries, assign_ids(entries, feed), feed)
