"""One person across providers: which patient keys belong together.

Every resource is stored under the patient key its message carried (DESIGN.md: the NHS number
when the patient has a valid one, else ``<feed>|<local id>``). Keys that are the same NHS number
are one person already. ``person_links`` records the keys that belong to another person:

* **A Patient that gains an NHS number**: a Patient stored under a local key arrives under an
  NHS number (or the other way round, when messages from before and after cross on different
  partitions). The local key is linked to the NHS number, so everything sent under it follows.
  A Patient once known under an NHS number keeps that key.
* **A merge** (HL7 v2 A40, as ingest-acute sends it): a Patient with a ``link`` of type
  ``replaced-by`` (or a survivor with ``replaces``). The retired Patient's key is linked to the
  survivor's person. When the other Patient has not arrived yet, the merge waits in
  ``pending_merges`` and is made when it does (or by the periodic sweep, ``resolve_pending``).

A key whose Patient has no NHS number and no link stays a person of its own, shown as such
(``Person.nhs_number`` is None).

The table is kept flat: each linked key points straight at its person (a key that is in no row),
so finding a person's keys is one indexed lookup. When two persons join, the one named by an NHS
number wins (else the survivor of a merge, else the key linked to).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import delete, or_, select, text, tuple_, update
from sqlalchemy.ext.asyncio import AsyncSession

from fhir_common.db import upsert
from fhir_common.identifiers import is_valid_nhs_number
from record.indexing import parse_reference
from record.tables import pending_merges, person_links, resources

MERGE_LINKS = {"replaced-by": "retired", "replaces": "survivor"}


def is_nhs_key(key: str | None) -> bool:
    return bool(key) and is_valid_nhs_number(key or "")


@dataclass(frozen=True)
class Person:
    key: str  # the person's own key: an NHS number when it has one
    keys: tuple[str, ...]  # every patient key that belongs to it (its own first)

    @property
    def nhs_number(self) -> str | None:
        return self.key if is_nhs_key(self.key) else None


def preferred_key(stored: str | None, arriving: str | None) -> str | None:
    """The key a Patient is stored under: an NHS number, once it had one, is never given up for
    a local key (an older message may arrive late on another partition)."""
    if stored and is_nhs_key(stored) and arriving and not is_nhs_key(arriving):
        return stored
    return arriving or stored


def merge_pairs(patient: dict[str, Any]) -> list[tuple[str, str]]:
    """``(retired, survivor)`` Patient ids that ``patient``'s links declare."""
    pairs: list[tuple[str, str]] = []
    own = patient.get("id")
    links = patient.get("link")
    if not isinstance(own, str) or not isinstance(links, list):
        return pairs
    for link in links:
        if not isinstance(link, dict) or link.get("type") not in MERGE_LINKS:
            continue
        other = link.get("other")
        reference = other.get("reference") if isinstance(other, dict) else None
        target = parse_reference(reference) if isinstance(reference, str) else None
        if not target or target[0] != "Patient" or target[1] == own:
            continue
        if link["type"] == "replaced-by":
            pairs.append((own, target[1]))
        else:
            pairs.append((target[1], own))
    return pairs


class Linker:
    """Links keys inside one unit of work, remembering what it has looked up."""

    def __init__(self, session: AsyncSession) -> None:
        self.session = session
        self._person: dict[str, str] = {}

    async def persons_of(self, keys: Iterable[str]) -> dict[str, str]:
        """The person of each key (itself when it is linked to nobody)."""
        keys = [k for k in keys if k]
        wanted = sorted(set(keys) - self._person.keys())
        for start in range(0, len(wanted), 4000):
            chunk = wanted[start : start + 4000]
            query = select(person_links.c.patient_key, person_links.c.person).where(
                person_links.c.patient_key.in_(chunk)
            )
            found = dict((r[0], r[1]) for r in await self.session.execute(query))
            for key in chunk:
                self._person[key] = found.get(key, key)
        return {k: self._person[k] for k in keys}

    async def link(self, key: str, to: str, reason: str) -> bool:
        """Make ``key``'s person and ``to``'s person one; True if they were two."""
        persons = await self.persons_of([key, to])
        mine, theirs = persons[key], persons[to]
        if mine == theirs:
            return False
        if is_nhs_key(theirs) or not is_nhs_key(mine):
            winner, loser = theirs, mine
        else:
            winner, loser = mine, theirs
        await self.session.execute(
            update(person_links).where(person_links.c.person == loser).values(person=winner)
        )
        await upsert(
            self.session,
            person_links,
            [
                {
                    "patient_key": loser,
                    "person": winner,
                    "reason": reason,
                    "linked_at": datetime.now(UTC),
                }
            ],
            ["patient_key"],
        )
        for cached, person in list(self._person.items()):
            if person == loser:
                self._person[cached] = winner
        self._person[loser] = winner
        return True


@dataclass(frozen=True)
class ArrivingPatient:
    id: str
    key: str | None  # the key it is stored under now
    keys: tuple[str, ...]  # every key it was stored or sent under (stored first)
    content: dict[str, Any]


async def link_patients(linker: Linker, patients: Sequence[ArrivingPatient]) -> int:
    """Make the links the arriving Patients call for; returns how many persons were joined."""
    joined = 0
    for patient in patients:
        seen = list(dict.fromkeys(k for k in patient.keys if k))
        nhs = [k for k in seen if is_nhs_key(k)]
        local = [k for k in seen if not is_nhs_key(k)]
        if nhs:
            # local keys join the NHS number (NHS number to another NHS number: the Patient
            # moves, but what its old number's person holds stays there)
            target = patient.key if patient.key and is_nhs_key(patient.key) else nhs[-1]
            for key in local:
                joined += await linker.link(key, target, "nhs-number")
        elif len(local) > 1 and patient.key:
            for key in local:
                if key != patient.key:
                    joined += await linker.link(key, patient.key, "key-change")
    pairs = {pair for p in patients for pair in merge_pairs(p.content)}
    arriving = {p.id for p in patients}
    session = linker.session
    if arriving:
        waiting = select(pending_merges.c.retired, pending_merges.c.survivor).where(
            or_(
                pending_merges.c.retired.in_(sorted(arriving)),
                pending_merges.c.survivor.in_(sorted(arriving)),
            )
        )
        pairs |= {(r[0], r[1]) for r in await session.execute(waiting)}
    if not pairs:
        return joined
    keys = {p.id: p.key for p in patients}
    unknown = sorted({i for pair in pairs for i in pair} - keys.keys())
    if unknown:
        query = select(resources.c.id, resources.c.patient_key).where(
            resources.c.resource_type == "Patient", resources.c.id.in_(unknown)
        )
        keys.update({r[0]: r[1] for r in await session.execute(query)})
    made: list[tuple[str, str]] = []
    pending: list[dict[str, Any]] = []
    for retired, survivor in sorted(pairs):
        retired_key, survivor_key = keys.get(retired), keys.get(survivor)
        if not retired_key or not survivor_key:
            pending.append(
                {"retired": retired, "survivor": survivor, "noted_at": datetime.now(UTC)}
            )
            continue
        made.append((retired, survivor))
        if retired_key != survivor_key:
            joined += await linker.link(retired_key, survivor_key, "merge")
    if made:
        await session.execute(
            delete(pending_merges).where(
                tuple_(pending_merges.c.retired, pending_merges.c.survivor).in_(made)
            )
        )
    if pending:
        await upsert(session, pending_merges, pending, ["retired", "survivor"])
    return joined


async def resolve_pending(linker: Linker, limit: int = 1000) -> int:
    """Make the waiting merges whose two Patients are both stored now; returns how many.

    A merge and its survivor may be committed by two consumers at the same moment, each
    without seeing the other's work; this sweep (run every few seconds) closes that gap.
    """
    session = linker.session
    retired = resources.alias("retired")
    survivor = resources.alias("survivor")
    query = (
        select(
            pending_merges.c.retired,
            pending_merges.c.survivor,
            retired.c.patient_key,
            survivor.c.patient_key,
        )
        .join(
            retired,
            (retired.c.resource_type == "Patient") & (retired.c.id == pending_merges.c.retired),
        )
        .join(
            survivor,
            (survivor.c.resource_type == "Patient") & (survivor.c.id == pending_merges.c.survivor),
        )
        .limit(limit)
    )
    found = (await session.execute(query)).all()
    for _, _, retired_key, survivor_key in found:
        if retired_key and survivor_key and retired_key != survivor_key:
            await linker.link(retired_key, survivor_key, "merge")
    if found:
        await session.execute(
            delete(pending_merges).where(
                tuple_(pending_merges.c.retired, pending_merges.c.survivor).in_(
                    [(r[0], r[1]) for r in found]
                )
            )
        )
    return len(found)


_PERSON_OF_PATIENT = text(
    """
    WITH asked AS (
        SELECT patient_key FROM record.resources WHERE resource_type = 'Patient' AND id = :id
    ), person AS (
        SELECT coalesce(
            (SELECT l.person FROM record.person_links l JOIN asked
             ON l.patient_key = asked.patient_key),
            (SELECT patient_key FROM asked)
        ) AS key
    )
    SELECT 0 AS linked, person.key FROM person WHERE EXISTS (SELECT 1 FROM asked)
    UNION ALL
    SELECT 1, l.patient_key FROM record.person_links l JOIN person ON l.person = person.key
    """
)


async def person_of_patient(session: AsyncSession, patient_id: str) -> Person | None:
    """The person Patient ``patient_id`` belongs to, in one round trip; None when the Patient is
    not stored (a person without keys when it has no patient key)."""
    rows = (await session.execute(_PERSON_OF_PATIENT, {"id": patient_id})).all()
    if not rows:
        return None
    own = next((key for linked, key in rows if linked == 0), None)
    if own is None:
        return Person(f"Patient/{patient_id}", ())
    return Person(own, (own, *sorted(key for linked, key in rows if linked == 1)))


async def person_of_key(session: AsyncSession, key: str) -> Person:
    """The person a patient key belongs to, with all its keys."""
    own = (
        await session.execute(
            select(person_links.c.person).where(person_links.c.patient_key == key)
        )
    ).scalar_one_or_none() or key
    linked = await session.execute(
        select(person_links.c.patient_key)
        .where(person_links.c.person == own)
        .order_by(person_links.c.patient_key)
    )
    return Person(own, (own, *(r[0] for r in linked)))
