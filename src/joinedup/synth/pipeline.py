"""One practice from people to files: the unit of work of generation.

A worker samples the practice's patients (vectorised), then for each patient, with the patient's
own random stream, simulates their story, writes what each provider's feed would send, and the
ground truth. The practice's messages are sorted by send time and written as shard files, one per
feed, which ``output.merge`` later merges across practices. Memory is bounded by one practice.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from datetime import date, timedelta
from functools import lru_cache
from pathlib import Path
from typing import Any

import orjson

from joinedup.synth import clock as clk
from joinedup.synth import identity, truth
from joinedup.synth.clock import Clock
from joinedup.synth.csv_extracts import CsvFeeds
from joinedup.synth.events import Event, Kind
from joinedup.synth.fhir_gp import GpFeed
from joinedup.synth.hl7_adt import AcuteFeed
from joinedup.synth.noise import Noise
from joinedup.synth.person import Person, people
from joinedup.synth.population import sample_practice
from joinedup.synth.rng import patient_random
from joinedup.synth.routine import Calendar, routine_events
from joinedup.synth.timeline import acute_story
from joinedup.synth.world import World, build_world


@dataclass(frozen=True)
class Config:
    patients: int
    seed: int
    years: float
    start: date
    noise: Noise = field(default_factory=Noise)

    @property
    def window(self) -> float:
        """Days the feeds cover."""
        return self.years * 365.25

    @property
    def index_day(self) -> float:
        """Where the ground-truth horizons start: one year in (the year before is the history
        risk scores use), or half way for shorter runs."""
        return min(365.0, self.window / 2.0)


@dataclass
class PracticeSummary:
    practice: int
    patients: int
    messages: dict[str, int]  # feed id -> messages (CSV: rows)
    alerts: int


@lru_cache(maxsize=4)
def world_for(seed: int, patients: int) -> World:
    return build_world(seed, patients)


def birth_date(start: date, person: Person) -> str:
    born = date(start.year - person.age, start.month, min(start.day, 28))
    return (born - timedelta(days=person.birth_offset_days)).isoformat()


class _Buffers:
    """A practice's output lines, per file, with their send time for sorting."""

    def __init__(self) -> None:
        self.lines: dict[str, list[tuple[int, int, bytes]]] = defaultdict(list)
        self.sequence = 0

    def add(self, name: str, sent: int, line: bytes) -> None:
        self.sequence += 1
        self.lines[name].append((sent, self.sequence, line))


def envelope(sent: int, occurred: int, feed: str, kind: str, key: str, **payload: Any) -> bytes:
    """An NDJSON line; ``sent_at`` first so that output.py can sort on ``line[12:32]``."""
    return orjson.dumps(
        {
            "sent_at": clk.iso(sent),
            "occurred_at": clk.iso(occurred),
            "feed": feed,
            "kind": kind,
            "key": key,
            **payload,
        }
    )


def run_practice(config: Config, practice_index: int, shard_dir: Path) -> PracticeSummary:
    world = world_for(config.seed, config.patients)
    practice = world.practices[practice_index]
    clock = Clock(config.start)
    calendar = Calendar(config.start.weekday())
    window, index_day = config.window, config.index_day
    gp = GpFeed(world, practice, clock)
    acute = [AcuteFeed(h, practice, clock, config.noise) for h in world.hospitals]
    csv = CsvFeeds(world, practice, clock, config.noise, window)
    buffers = _Buffers()
    counts: dict[str, int] = defaultdict(int)
    patient_rows: list[bytes] = []
    alerts: list[tuple[str, bytes]] = []

    def fhir(sent: int, occurred: int, key: str, body: dict[str, Any]) -> None:
        buffers.add(
            practice.feed_id,
            sent,
            envelope(sent, occurred, practice.feed_id, "fhir", key, body=body),
        )
        counts[practice.feed_id] += 1

    first_load = clock.start_epoch - 86_400  # the practice system's initial load, the day before
    fhir(first_load, first_load, f"practice|{practice.ods}", gp.practice_bundle())
    cohort = sample_practice(config.seed, practice, len(world.hospitals))
    for position, person in enumerate(people(cohort)):
        person.birth_date = birth_date(config.start, person)
        nhs = identity.nhs_number(person.index)
        rng = patient_random(config.seed, person.index)
        story = acute_story(person, rng, window, index_day, len(world.hospitals))
        events = story.events + routine_events(person, rng, story, window, calendar)
        events.sort(key=lambda e: (e.start, e.serial))

        loaded = first_load + 60 + position
        fhir(loaded, loaded, nhs, gp.registration(person, nhs, rng))
        for event in events:
            _emit(event, person, nhs, rng, gp, acute, csv, clock, buffers, counts, fhir, config)

        oracle, observable = truth.risks(person, story, index_day)
        row = truth.patient_row(
            person,
            nhs,
            practice,
            world,
            story,
            events,
            clock,
            index_day,
            window,
            observable,
            oracle,
        )
        patient_rows.append(_csv_line(row))
        for alert in truth.alerts(
            person, nhs, practice, world, events, clock, index_day, observable[3]
        ):
            alerts.append((alert["at"], orjson.dumps(alert)))
        for event in events:
            record = truth.event_record(person, nhs, event, clock, world)
            buffers.add("truth-events", 0, orjson.dumps(record))

    _write_shards(shard_dir, buffers, patient_rows, alerts)
    return PracticeSummary(practice_index, len(cohort), dict(counts), len(alerts))


def _emit(
    event: Event,
    person: Person,
    nhs: str,
    rng: Any,
    gp: GpFeed,
    acute: list[AcuteFeed],
    csv: CsvFeeds,
    clock: Clock,
    buffers: _Buffers,
    counts: dict[str, int],
    fhir: Any,
    config: Config,
) -> None:
    kind = event.kind
    if kind is Kind.GP:
        occurred = clock.epoch(event.start)
        sent = occurred + 600 + rng.randrange(60, 3600)
        body = gp.consultation(person, event, rng)
        fhir(sent, occurred, nhs, body)
        if rng.random() < config.noise.gp_duplicate:
            fhir(sent + rng.randrange(300, 3600), occurred, nhs, body)
    elif kind is Kind.LAB:
        occurred = clock.epoch(event.start)
        fhir(occurred + rng.randrange(60, 1800), occurred, nhs, gp.lab_result(person, event))
    elif kind is Kind.DEATH:
        occurred = clock.epoch(event.start)
        sent = occurred + rng.randrange(1, 5) * 86_400 + rng.randrange(0, 36_000)
        fhir(sent, occurred, nhs, gp.death(person, nhs, occurred))
    elif event.acute:
        feed = acute[event.trust]
        feed_id = feed.hospital.feed_id
        for message in feed.messages(person, event, rng, nhs):
            line = envelope(
                message.sent, message.occurred, feed_id, "hl7v2", nhs, body=message.body
            )
            buffers.add(feed_id, message.sent, line)
            counts[feed_id] += 1
    elif kind in (Kind.COMMUNITY, Kind.MENTAL_HEALTH, Kind.SOCIAL_CARE):
        if kind is Kind.SOCIAL_CARE and event.start >= config.window:
            return
        for row in csv.rows(person, event, rng, nhs):
            if row.sent >= clock.epoch(config.window) + 7 * 86_400:
                continue  # after the last extract of the run
            line = envelope(row.sent, row.occurred, row.feed, "csv", nhs, row=row.values)
            buffers.add(row.feed, row.sent, line)
            counts[row.feed] += 1


def _csv_line(values: list[Any]) -> bytes:
    out = []
    for value in values:
        text = str(value)
        if any(c in text for c in ',"\r\n'):
            text = '"' + text.replace('"', '""') + '"'
        out.append(text)
    return (",".join(out)).encode()


def _write_shards(
    shard_dir: Path,
    buffers: _Buffers,
    patient_rows: list[bytes],
    alerts: list[tuple[str, bytes]],
) -> None:
    shard_dir.mkdir(parents=True, exist_ok=True)
    for name, lines in buffers.lines.items():
        if name != "truth-events":
            lines.sort(key=lambda item: (item[0], item[1]))
        with (shard_dir / f"{name}.ndjson").open("wb") as out:
            out.writelines(line + b"\n" for _, _, line in lines)
    with (shard_dir / "truth-patients.csv").open("wb") as out:
        out.writelines(row + b"\r\n" for row in patient_rows)
    alerts.sort(key=lambda item: item[0])
    with (shard_dir / "truth-alerts.ndjson").open("wb") as out:
        out.writelines(line + b"\n" for _, line in alerts)


def practice_count(config: Config) -> int:
    return len(world_for(config.seed, config.patients).practices)
