"""The output directory: merging practice shards into one time-ordered file per feed, CSV
extracts with their mapping files, the ground truth, and the manifest that describes it all.

Layout (``FORMAT_VERSION`` 1)::

    manifest.json              what was generated, counts, and where everything is
    world.json                 practices, MDGs, trusts, providers, clinicians
    feeds.json                 the feeds to register (fhir_common.feeds.Feed, as JSON)
    feeds/<feed>.ndjson        one line per message in send order (see ``envelope``)
    csv/<feed>/mapping.yaml    how the feed's columns map to FHIR
    csv/<feed>/<date>.csv      one extract per send time
    truth/patients.csv         per patient outcomes and oracle risks (truth.PATIENT_COLUMNS)
    truth/events.ndjson        every true event, without the feeds' noise
    truth/alerts.ndjson        the alerts the rules should raise, in time order

Each feed line is ``{"sent_at", "occurred_at", "feed", "kind", "key", ...}`` with ``body`` (a FHIR
Bundle object, or an HL7 ER7 string with ``\\r`` between segments) for fhir and hl7v2 feeds, and
``path`` and ``rows`` (the extract file) for csv feeds. ``key`` is the patient's true NHS number (or
``practice|<ods>`` for a practice's directory bundle): replay partitions on it so that one
person's messages stay in order; it is not part of what the provider sends.
"""

from __future__ import annotations

import csv
import heapq
import io
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

import orjson
import yaml

from joinedup.synth import truth
from joinedup.synth.csv_extracts import columns_of, mapping_for
from joinedup.synth.world import World

FORMAT_VERSION = 1
SHARDS = ".shards"


def sort_key(line: bytes) -> bytes:
    """The ``sent_at`` of an envelope line: it is always the first key, 20 characters long."""
    return line[12:32]


def _lines(path: Path) -> Iterator[bytes]:
    with path.open("rb") as source:
        yield from source


def merged(paths: list[Path]) -> Iterator[bytes]:
    """Lines of time-ordered files in time order; ties keep the order of ``paths``."""
    return heapq.merge(*(_lines(p) for p in paths), key=sort_key)


def shard_dirs(out: Path, practices: int) -> list[Path]:
    return [out / SHARDS / f"{i:05d}" for i in range(practices)]


def merge_feed(out: Path, world: World, feed_id: str, kind: str, practices: int) -> int:
    """Merge one feed's shards into ``feeds/<feed>.ndjson``; return the number of lines."""
    paths = [d / f"{feed_id}.ndjson" for d in shard_dirs(out, practices)]
    paths = [p for p in paths if p.exists()]
    target = out / "feeds" / f"{feed_id}.ndjson"
    target.parent.mkdir(parents=True, exist_ok=True)
    with target.open("wb") as sink:
        if kind == "csv":
            return _write_extracts(out, world, feed_id, merged(paths), sink)
        count = 0
        for line in merged(paths):
            sink.write(line)
            count += 1
        return count


def _write_extracts(
    out: Path, world: World, feed_id: str, lines: Iterator[bytes], index: BinaryIO
) -> int:
    """Group CSV rows by send time into extract files, and index each in the feed file."""
    folder = out / "csv" / feed_id
    folder.mkdir(parents=True, exist_ok=True)
    mapping = mapping_for(world, feed_id)
    comment = f"# Mapping of the {feed_id} CSV extracts to FHIR R4 (synthetic feed)\n"
    body = yaml.safe_dump(mapping, sort_keys=False, allow_unicode=True)
    (folder / "mapping.yaml").write_text(comment + body)
    header = columns_of(world, feed_id)
    extracts = 0
    current: bytes | None = None
    rows: list[list[str]] = []
    first: dict[str, Any] = {}

    def flush() -> None:
        nonlocal extracts
        if not rows:
            return
        sent = first["sent_at"]
        name = f"{feed_id}-{sent[:10]}.csv"
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\r\n")
        writer.writerow(header)
        writer.writerows(rows)
        (folder / name).write_text(buffer.getvalue(), encoding="utf-8")
        entry = {
            "sent_at": sent,
            "occurred_at": first["occurred_at"],
            "feed": feed_id,
            "kind": "csv",
            "key": f"extract|{feed_id}",
            "path": f"csv/{feed_id}/{name}",
            "rows": len(rows),
        }
        index.write(orjson.dumps(entry) + b"\n")
        extracts += 1

    for line in lines:
        key = sort_key(line)
        record = orjson.loads(line)
        if key != current:
            flush()
            rows, current, first = [], key, record
        rows.append(record["row"])
    flush()
    return extracts


def write_truth(out: Path, practices: int) -> dict[str, int]:
    folder = out / "truth"
    folder.mkdir(parents=True, exist_ok=True)
    dirs = shard_dirs(out, practices)
    patients = 0
    with (folder / "patients.csv").open("wb") as sink:
        sink.write(",".join(truth.PATIENT_COLUMNS).encode() + b"\r\n")
        for d in dirs:
            with (d / "truth-patients.csv").open("rb") as source:
                for line in source:
                    sink.write(line)
                    patients += 1
    events = _concatenate([d / "truth-events.ndjson" for d in dirs], folder / "events.ndjson")
    alerts = 0
    with (folder / "alerts.ndjson").open("wb") as sink:
        paths = [d / "truth-alerts.ndjson" for d in dirs]
        for line in heapq.merge(*(_lines(p) for p in paths), key=_alert_time):
            sink.write(line)
            alerts += 1
    return {"patients": patients, "events": events, "alerts": alerts}


def _alert_time(line: bytes) -> bytes:
    start = line.index(b'"at":"') + 6
    return line[start : start + 20]


def _concatenate(paths: list[Path], target: Path) -> int:
    count = 0
    with target.open("wb") as sink:
        for path in paths:
            if path.exists():
                with path.open("rb") as source:
                    for line in source:
                        sink.write(line)
                        count += 1
    return count


def remove_shards(out: Path) -> None:
    shutil.rmtree(out / SHARDS, ignore_errors=True)


def write_json(path: Path, data: Any) -> None:
    path.write_bytes(orjson.dumps(data, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS))


def read_manifest(directory: Path) -> dict[str, Any]:
    manifest: dict[str, Any] = orjson.loads((directory / "manifest.json").read_bytes())
    if manifest.get("format_version") != FORMAT_VERSION:
        raise ValueError(
            f"{directory} holds synthetic data of format {manifest.get('format_version')}; "
            f"this version reads format {FORMAT_VERSION}"
        )
    return manifest
