"""Receiving a provider's Bundle: check it, normalise it, publish it, answer for each entry.

* ``transaction``: all or nothing. Every entry is checked first (structure, types, NHS numbers,
  ODS codes, the token's scopes, conditional references); one bad entry rejects the whole bundle
  (every problem listed, each at its FHIRPath) and nothing is published. Otherwise everything
  is published in one atomic publication.
* ``batch``: entries stand alone; bad ones get their own 4xx outcome, good ones are published.
* ``collection`` (a GP structured-record extract): like a transaction, each entry an update.

Entries may be ``POST`` (create; ``ifNoneExist`` honoured) or ``PUT`` (update; ``Type/id`` or a
conditional ``Type?identifier=...``). References may be ``urn:uuid:`` full URLs, relative or
absolute URLs, or conditional (``Patient?identifier=system|value``): see ``conditional``.

Whatever is rejected is kept, as sent, on the dead-letter topic. A resource whose content did not
change since ingest-gp last published it is not published again (``publishing``); its entry is
answered exactly as the first time, so a resent bundle gets the same answer.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson

from fhir_common.auth import Principal
from fhir_common.errors import FhirError, Issue, operation_outcome
from fhir_common.events import event_headers
from fhir_common.feeds import Feed
from fhir_common.patient_directory import keys_of
from fhir_common.service import ServiceContext
from fhir_common.validation import parse_json
from ingest_gp import conditional
from ingest_gp.normalise import Entry, assign_ids, encode
from ingest_gp.patients import key_for, own_key, patient_reference
from ingest_gp.pool import Pool
from ingest_gp.publishing import Outcome, outgoing, publish
from ingest_gp.tables import patient_keys

ACCEPTED_TYPES = ("transaction", "batch", "collection")
RESPONSE_TYPE = {
    "transaction": "transaction-response",
    "batch": "batch-response",
    "collection": "batch-response",
}
SUPPORTED_METHODS = ("POST", "PUT")
_CONDITIONAL_REFERENCE = re.compile(rb'"reference":"[A-Za-z]+\?')
_TYPE_AND_ID = re.compile(r"/?([A-Z][A-Za-z]+)/([A-Za-z0-9\-.]{1,64})")


@dataclass
class Refusal:
    status: int
    issues: list[Issue]


@dataclass
class Planned:
    """An accepted entry and what to do with it."""

    entry: Entry
    raw: bytes = b""  # the resource as sent (JSON)
    criteria: conditional.Criteria | None = None  # ifNoneExist, or a conditional PUT's URL
    existing: str | None = None  # ifNoneExist matched this resource: nothing to create
    notes: list[Issue] = field(default_factory=list)  # warnings for the entry's outcome


@dataclass
class Received:
    """A checked bundle: what to publish, what was refused, and the answer for each entry."""

    bundle_type: str
    total: int
    accepted: list[Planned] = field(default_factory=list)
    refused: dict[int, Refusal] = field(default_factory=dict)
    outcome: Outcome = field(default_factory=Outcome)

    @property
    def all_or_nothing(self) -> bool:
        return self.bundle_type != "batch"

    def refuse(self, index: int, status: int, issues: list[Issue]) -> None:
        self.refused[index] = Refusal(status, issues)
        self.accepted = [p for p in self.accepted if p.entry.index != index]

    def fail_if_refused(self) -> None:
        if self.all_or_nothing and self.refused:
            status = max(r.status for r in self.refused.values())
            issues = [i for index in sorted(self.refused) for i in self.refused[index].issues]
            raise FhirError(status, issues)


def read_bundle(body: bytes) -> dict[str, Any]:
    return check_bundle_shape(parse_json(body))


def check_bundle_shape(data: Any) -> dict[str, Any]:
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


# --- checking each entry -------------------------------------------------------------------------


async def check_entries(
    bundle: Mapping[str, Any],
    principal: Principal,
    pool: Pool | None = None,
    parallel: bool = False,
) -> Received:
    """Every entry checked on its own; raises for an all-or-nothing bundle with a bad entry."""
    entries = bundle.get("entry", [])
    received = Received(bundle_type=str(bundle["type"]), total=len(entries))
    candidates: list[Planned] = []
    for index, raw in enumerate(entries):
        planned = _plan_entry(index, raw, received.bundle_type, principal)
        if isinstance(planned, Refusal):
            received.refused[index] = planned
        else:
            candidates.append(planned)
    items = [(p.entry.resource, f"Bundle.entry[{p.entry.index}].resource") for p in candidates]
    pool = pool or Pool(0)
    results = await pool.check_all(items, parallel)
    for planned, issues in zip(candidates, results, strict=True):
        if issues:
            received.refused[planned.entry.index] = Refusal(422, issues)
        else:
            received.accepted.append(planned)
    _refuse_duplicates(received)
    received.fail_if_refused()
    return received


def _plan_entry(index: int, raw: Any, bundle_type: str, principal: Principal) -> Planned | Refusal:
    path = f"Bundle.entry[{index}]"
    if not isinstance(raw, dict):
        return Refusal(
            422, [Issue("structure", f"{path}: entry is not a JSON object", expression=(path,))]
        )
    method = _method(raw, bundle_type)
    if method not in SUPPORTED_METHODS:
        issue = Issue(
            "not-supported",
            f"{path}.request.method: {method or 'no method'} is not supported (POST or PUT)",
            expression=[f"{path}.request.method"],
        )
        return Refusal(422, [issue])
    if not isinstance(raw.get("resource"), dict):
        return Refusal(
            422, [Issue("required", f"{path}: entry has no resource", expression=(path,))]
        )
    # Worked on in place: a refused entry is dead-lettered from the body as it was sent.
    resource = raw["resource"]
    sent = orjson.dumps(resource)
    resource_type = resource.get("resourceType")
    full_url = raw.get("fullUrl") if isinstance(raw.get("fullUrl"), str) else None
    planned = Planned(Entry(index, resource, full_url, method), sent)
    request: dict[str, Any] = raw["request"] if isinstance(raw.get("request"), dict) else {}
    problem = _read_request(planned, request, bundle_type, path)
    if problem is not None:
        return problem
    if isinstance(resource_type, str):
        permission = "c" if method == "POST" else "u"
        if not principal.allows(resource_type, permission):
            text = f"{path}: this token may not {method} {resource_type}"
            issue = Issue("forbidden", text, expression=(path,))
            return Refusal(403, [issue])
    return planned


def _method(raw: Mapping[str, Any], bundle_type: str) -> str:
    if bundle_type == "collection":
        return "PUT"
    request = raw.get("request")
    return str(request.get("method", "")).upper() if isinstance(request, dict) else ""


def _read_request(
    planned: Planned, request: Mapping[str, Any], bundle_type: str, path: str
) -> Refusal | None:
    """``request.url`` and ``ifNoneExist`` / ``ifMatch``: what the entry asks for."""
    resource = planned.entry.resource
    resource_type = resource.get("resourceType")
    url = request.get("url")
    if bundle_type == "collection" or not isinstance(resource_type, str):
        return None
    if planned.entry.method == "PUT" and isinstance(url, str):
        if conditional.is_conditional_reference(url):
            try:
                planned.criteria = conditional.parse(url, resource_type)
            except conditional.CriteriaError as error:
                return _bad(f"{path}.request.url", str(error), "not-supported")
        else:
            match = _TYPE_AND_ID.fullmatch(url.split("?")[0])
            if match is None or match.group(1) != resource_type:
                return _bad(
                    f"{path}.request.url", f"{url!r} is not {resource_type}/<id>", "invalid"
                )
            if "id" not in resource:
                resource["id"] = match.group(2)
            elif resource["id"] != match.group(2):
                return _bad(
                    f"{path}.request.url",
                    f"{url!r} does not match the resource's id {resource['id']!r}",
                    "invalid",
                )
    if planned.entry.method == "POST" and isinstance(url, str):
        named = url.split("?")[0].rstrip("/").rsplit("/", 1)[-1]
        if named != resource_type:
            return _bad(
                f"{path}.request.url",
                f"{url!r}: only creates (POST {resource_type}) are taken, not operations or "
                "other targets",
                "not-supported",
                422,
            )
    if planned.entry.method == "POST" and isinstance(request.get("ifNoneExist"), str):
        try:
            planned.criteria = conditional.parse(request["ifNoneExist"], resource_type)
        except conditional.CriteriaError as error:
            return _bad(f"{path}.request.ifNoneExist", str(error), "not-supported")
    if request.get("ifMatch") is not None:
        planned.notes.append(
            Issue(
                "informational",
                f"{path}.request.ifMatch: not checked; ingest-gp holds no versions (the record "
                "keeps every version)",
                severity="warning",
                expression=(f"{path}.request.ifMatch",),
            )
        )
    return None


def _bad(where: str, text: str, code: str, status: int = 400) -> Refusal:
    return Refusal(status, [Issue(code, f"{where}: {text}", expression=(where,))])


def _refuse_duplicates(received: Received) -> None:
    """A transaction may not write one resource twice (FHIR: the transaction fails)."""
    if received.bundle_type != "transaction":
        return
    seen: dict[tuple[str, str], int] = {}
    for planned in received.accepted:
        resource = planned.entry.resource
        key = (str(resource["resourceType"]), str(resource.get("id") or planned.entry.full_url))
        if key[1] in ("None", ""):
            continue
        if key in seen:
            where = f"Bundle.entry[{planned.entry.index}]"
            text = f"{where}: writes {key[0]}/{key[1]} again (as Bundle.entry[{seen[key]}] does)"
            received.refused[planned.entry.index] = Refusal(
                400, [Issue("duplicate", text, expression=(where,))]
            )
        else:
            seen[key] = planned.entry.index
    received.accepted = [p for p in received.accepted if p.entry.index not in received.refused]


# --- conditional creates, updates and references -------------------------------------------------


def conditional_references(resource: Any, path: str) -> list[tuple[str, str]]:
    """(FHIRPath, reference) of every ``Type?query`` reference in a resource."""
    found: list[tuple[str, str]] = []

    def walk(node: Any, where: str) -> None:
        if isinstance(node, dict):
            ref = node.get("reference")
            if isinstance(ref, str) and conditional.is_conditional_reference(ref):
                found.append((f"{where}.reference", ref))
            for key, value in node.items():
                walk(value, f"{where}.{key}")
        elif isinstance(node, list):
            for i, item in enumerate(node):
                walk(item, f"{where}[{i}]")

    walk(resource, path)
    return found


@dataclass
class Resolved:
    """What the conditional references of a bundle point at."""

    to_entries: dict[str, int] = field(default_factory=dict)  # reference → entry index
    to_known: dict[str, str] = field(default_factory=dict)  # reference → Type/id (ours)
    patient_keys: dict[str, str] = field(default_factory=dict)  # Patient/id → key (matched)


async def resolve_conditionals(ctx: ServiceContext, feed: Feed, received: Received) -> Resolved:
    """Settle conditional creates and updates, and find what conditional references point at."""
    assert ctx.db is not None
    resolved = Resolved()
    if not any(
        p.criteria is not None or _CONDITIONAL_REFERENCE.search(p.raw) for p in received.accepted
    ):
        return resolved  # nothing conditional (most bundles): no transaction to open
    async with ctx.db.transaction() as session:
        for planned in list(received.accepted):
            if planned.criteria is not None:
                await _settle(session, feed, received, planned)
        wanted: dict[str, list[tuple[int, str]]] = {}
        for planned in received.accepted:
            if not _CONDITIONAL_REFERENCE.search(planned.raw):
                continue  # the walk below costs; most resources have no such reference
            path = f"Bundle.entry[{planned.entry.index}].resource"
            for where, ref in conditional_references(planned.entry.resource, path):
                wanted.setdefault(ref, []).append((planned.entry.index, where))
        for ref, places in wanted.items():
            refusal = await _resolve_reference(session, feed, received, ref, resolved)
            if refusal is not None:
                status, code, text = refusal
                for index, where in places:
                    received.refuse(
                        index, status, [Issue(code, f"{where}: {text}", expression=(where,))]
                    )
    received.fail_if_refused()
    return resolved


async def _settle(session: Any, feed: Feed, received: Received, planned: Planned) -> None:
    """A conditional create (``ifNoneExist``) or update (``PUT Type?...``) against the index."""
    assert planned.criteria is not None
    index = planned.entry.index
    found = conditional.choose(
        await conditional.lookup(session, planned.criteria), feed.id, own_feed_only=True
    )
    where = f"Bundle.entry[{index}].request." + (
        "ifNoneExist" if planned.entry.method == "POST" else "url"
    )
    if len(found) > 1:
        text = f"{where}: {planned.criteria} matches {len(found)} resources"
        received.refuse(index, 412, [Issue("multiple-matches", text, expression=(where,))])
    elif found and planned.entry.method == "POST":
        planned.existing = found[0].ref
        text = f"{where}: {planned.criteria} matches {found[0].ref}; nothing created"
        planned.notes.append(Issue("informational", text, "information", expression=(where,)))
    elif found:
        planned.entry.fixed_id = found[0].ref.split("/", 1)[1]


async def _resolve_reference(
    session: Any, feed: Feed, received: Received, ref: str, resolved: Resolved
) -> tuple[int, str, str] | None:
    """Where one conditional reference points; (status, issue code, text) if nowhere."""
    try:
        criteria = conditional.parse(ref)
    except conditional.CriteriaError as error:
        return 400, "not-supported", str(error)
    in_bundle = [p for p in received.accepted if conditional.matches(p.entry.resource, criteria)]
    if len(in_bundle) == 1:
        resolved.to_entries[ref] = in_bundle[0].entry.index
        return None
    if in_bundle:
        return 412, "multiple-matches", f"{ref} matches {len(in_bundle)} entries of this bundle"
    found = conditional.choose(
        await conditional.lookup(session, criteria), feed.id, own_feed_only=False
    )
    if not found:
        return 404, "not-found", f"{ref} matches no resource known to ingest-gp"
    if len(found) > 1:
        return 412, "multiple-matches", f"{ref} matches {len(found)} resources"
    resolved.to_known[ref] = found[0].ref
    if found[0].patient_key and found[0].ref.startswith("Patient/"):
        resolved.patient_keys[found[0].ref] = found[0].patient_key
    return None


# --- publishing and answering --------------------------------------------------------------------


def patients_in(entries: Sequence[Entry], feed: Feed) -> dict[str, str]:
    """``Patient/<id>`` → key, for the patients the (normalised) bundle itself carries."""
    return {
        f"Patient/{e.resource['id']}": own_key(e.resource, feed)
        for e in entries
        if e.resource_type == "Patient"
    }


def referenced_patients(entries: Sequence[Entry]) -> set[str]:
    return {ref for e in entries if (ref := patient_reference(e.resource))}


def response_bundle(received: Received) -> dict[str, Any]:
    accepted = {p.entry.index: p for p in received.accepted}
    entries: list[dict[str, Any]] = []
    for index in range(received.total):
        if index in accepted:
            planned = accepted[index]
            entry = planned.entry
            if planned.existing:
                response: dict[str, Any] = {"status": "200 OK", "location": planned.existing}
            else:
                status = "201 Created" if entry.method == "POST" else "200 OK"
                response = {
                    "status": status,
                    "location": f"{entry.resource_type}/{entry.resource['id']}",
                }
            if planned.notes:
                response["outcome"] = operation_outcome(planned.notes)
            entries.append({"response": response})
        else:
            refusal = received.refused[index]
            entries.append(
                {
                    "response": {
                        "status": str(refusal.status),
                        "outcome": operation_outcome(refusal.issues),
                    }
                }
            )
    return {"resourceType": "Bundle", "type": RESPONSE_TYPE[received.bundle_type], "entry": entries}


async def receive_bundle(
    ctx: ServiceContext,
    feed: Feed,
    principal: Principal,
    bundle: Any,
    original: bytes,
    pool: Pool | None = None,
    parallel_threshold: int = 200,
) -> tuple[dict[str, Any], Received]:
    """Check, normalise and publish one pushed Bundle; return the response Bundle."""
    assert ctx.db is not None
    try:
        bundle = check_bundle_shape(bundle)
        parallel = len(bundle.get("entry", [])) >= parallel_threshold
        received = await check_entries(bundle, principal, pool, parallel)
        resolved = await resolve_conditionals(ctx, feed, received)
    except FhirError as error:
        await _keep_refused(ctx, feed, original, str(error))
        raise
    to_publish = [p.entry for p in received.accepted if p.existing is None]
    renames = assign_ids(to_publish, feed)
    for planned in received.accepted:
        if planned.existing and planned.entry.full_url:
            renames[planned.entry.full_url] = planned.existing
    by_index = {p.entry.index: p for p in received.accepted}
    for ref, index in resolved.to_entries.items():
        target = by_index[index]
        entry = target.entry
        renames[ref] = target.existing or f"{entry.resource_type}/{entry.resource['id']}"
    renames.update(resolved.to_known)
    rewritten: dict[bytes, bytes] = {}
    values = [encode(entry, renames, feed, rewritten) for entry in to_publish]
    keys = patients_in(to_publish, feed) | resolved.patient_keys
    elsewhere = referenced_patients(to_publish) - keys.keys()
    if elsewhere:
        async with ctx.db.transaction() as session:
            keys |= await keys_of(session, patient_keys, elsewhere)
    headers = event_headers(source=feed.id, setting=feed.setting)
    items = [
        outgoing(e.resource, key_for(e.resource, feed, keys), value)
        for e, value in zip(to_publish, values, strict=True)
    ]
    received.outcome = await publish(ctx.db, ctx.bus.publish, feed, items, headers)
    if received.refused:
        pristine = _read_again(original)
        for index, refusal in sorted(received.refused.items()):
            sent = orjson.dumps(pristine["entry"][index])
            await _keep_refused(ctx, feed, sent, "; ".join(i.diagnostics for i in refusal.issues))
    return response_bundle(received), received


def _read_again(original: bytes) -> Any:
    """The bundle as it was sent (entries are changed in place as they are checked)."""
    if original.lstrip(b"\xef\xbb\xbf \t\r\n").startswith(b"<"):
        from ingest_gp.fhirxml import read_xml

        return read_xml(original)
    return parse_json(original)


async def _keep_refused(ctx: ServiceContext, feed: Feed, original: bytes, error: str) -> None:
    await ctx.bus.dead_letter(
        value=original, source=feed.id, error=error, service=ctx.name, origin="POST /fhir"
    )
