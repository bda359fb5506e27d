"""CSV extracts from community, mental-health and social-care systems (``POST /ingest-gp/csv``).

Each row becomes the feed's resource (an Encounter, an EpisodeOfCare ...) and the Patient it is
about, as the feed's mapping (``csvmap``) says. Rows are independent: a row that cannot be
turned into valid FHIR is reported with its row number and every problem, kept on the
dead-letter topic, and the good rows are processed all the same. Rows are read and published
a chunk at a time (each chunk one atomic publication), so an extract's size does not decide the
memory used.

* Identity: the row's resource is ``<feed>|<Type>|<row id>`` (a later row with the same id, say
  a care package reviewed or ended, updates it); the patient is ``<feed>|Patient|<local id>``.
* Patients: one Patient per patient per chunk, the rows' details merged in row order (a later
  row's value wins; identifiers are kept from every row). An NHS number that a row leaves blank
  but the feed sent before for the same local id is kept (from ingest-gp's patient directory),
  so a blank cell neither erases it nor moves the patient to another key.
* An NHS number that fails its check digit rejects the row (``invalid: drop`` in the mapping
  keeps the row without it, with a warning).
* Idempotent like everything else (``publishing``): an extract sent twice publishes nothing new.

Row numbers count data rows from 1; ``line`` is the line of the file where the row starts (the
header is line 1).
"""

from __future__ import annotations

import csv
import io
import threading
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import IO, Any

import orjson
from fastapi import Request

from fhir_common.errors import FhirError, Issue, operation_outcome
from fhir_common.events import event_headers
from fhir_common.feeds import Feed
from fhir_common.identifiers import (
    NHS_NUMBER_SYSTEM,
    is_valid_nhs_number,
    normalise_nhs_number,
    resource_id,
)
from fhir_common.patient_directory import keys_of
from fhir_common.service import ServiceContext
from ingest_gp import deadletters
from ingest_gp.csvmap import (
    DATE_TYPES,
    NUMBER_TYPES,
    CsvMapping,
    MappingError,
    Source,
    load_file,
)
from ingest_gp.normalise import Entry, finish
from ingest_gp.patients import own_key
from ingest_gp.pool import Pool
from ingest_gp.publishing import Outcome, outgoing, publish
from ingest_gp.tables import patient_keys

CHUNK_ROWS = 2000
_TIME_DIRECTIVES = ("%H", "%I", "%M", "%S", "%X", "%c", "%T", "%R")
_TRUE = frozenset({"true", "t", "yes", "y", "1"})
_FALSE = frozenset({"false", "f", "no", "n", "0"})


class Mappings:
    """The feeds' mapping files (``<dir>/<feed id>.yaml``), re-read when one changes."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._lock = threading.Lock()
        self._cache: dict[str, tuple[tuple[int, int], CsvMapping]] = {}

    def path(self, feed_id: str) -> Path:
        return self.directory / f"{feed_id}.yaml"

    def get(self, feed: Feed) -> CsvMapping:
        path = self.path(feed.id)
        try:
            stat = path.stat()
        except FileNotFoundError:
            raise FhirError.single(
                422,
                "not-supported",
                f"no CSV mapping is configured for feed {feed.id!r} (expected {path})",
            ) from None
        stamp = (stat.st_mtime_ns, stat.st_size)
        with self._lock:
            cached = self._cache.get(feed.id)
            if cached is not None and cached[0] == stamp:
                return cached[1]
        try:
            mapping = load_file(path)
            problems = mapping.check_feed(feed)
            if problems:
                raise MappingError(str(path), problems)
        except MappingError as error:
            issues = [Issue("exception", f"CSV mapping {path}: {p}") for p in error.problems]
            raise FhirError(500, issues) from error
        with self._lock:
            self._cache[feed.id] = (stamp, mapping)
        return mapping


# --- from cells to FHIR values -------------------------------------------------------------------


class CellError(ValueError):
    pass


_MISSING = object()


def cell_value(source: Source, row: list[str], columns: dict[str, int], mapping: CsvMapping) -> Any:
    """The FHIR value of one mapped element for one row, ``_MISSING`` when blank."""
    if source.columns:
        parts = [row[columns[c]].strip() if columns[c] < len(row) else "" for c in source.columns]
        raw: Any = source.separator.join(p for p in parts if p) if any(parts) else ""
    else:
        raw = source.value
    if isinstance(raw, str):
        for text in source.remove:
            raw = raw.replace(text, "")
        raw = raw.strip()
    if raw is None or raw == "":
        if source.required:
            raise CellError(f"{source.column_text} is blank but required")
        return _MISSING
    if source.map is not None:
        key = str(raw)
        if key in source.map:
            raw = source.map[key]
        else:
            folded = {k.casefold(): v for k, v in source.map.items()}
            if key.casefold() in folded:
                raw = folded[key.casefold()]
            elif source.default is not None:
                raw = source.default
            else:
                known = ", ".join(repr(k) for k in list(source.map)[:10])
                raise CellError(
                    f"{source.column_text}: {key!r} has no translation (known: {known})"
                )
    return typed(source, raw, mapping)


def typed(source: Source, raw: Any, mapping: CsvMapping) -> Any:
    leaf = source.target.leaf
    kind = leaf.type
    if kind in DATE_TYPES and source.format is not None:
        return _date_value(source, str(raw), kind, mapping)
    if kind == "boolean":
        if isinstance(raw, bool):
            return raw
        text = str(raw).strip().casefold()
        if text in _TRUE or text in _FALSE:
            return text in _TRUE
        raise CellError(f"{source.column_text}: {raw!r} is not yes or no")
    if kind in NUMBER_TYPES:
        if isinstance(raw, int | float) and not isinstance(raw, bool):
            return raw
        text = str(raw).strip().replace(",", "")
        try:
            return int(text) if kind != "decimal" or text.lstrip("-").isdigit() else float(text)
        except ValueError:
            raise CellError(f"{source.column_text}: {raw!r} is not a number") from None
    text = str(raw)
    if kind == "Coding":
        return {"system": source.system, "code": text} if source.system else {"code": text}
    if kind == "CodeableConcept":
        if source.system:
            return {"coding": [{"system": source.system, "code": text}]}
        return {"text": text}
    if kind == "Identifier":
        return {"system": source.system, "value": text} if source.system else {"value": text}
    if kind == "Reference":
        return {"identifier": {"system": source.system, "value": text}}
    return text


def _date_value(source: Source, raw: str, kind: str, mapping: CsvMapping) -> str:
    fmt = source.format or ""
    try:
        moment = datetime.strptime(raw, fmt)
    except ValueError:
        raise CellError(
            f"{source.column_text}: {raw!r} is not a date in the format {fmt!r}"
        ) from None
    has_time = any(d in fmt for d in _TIME_DIRECTIVES)
    if kind == "date" or (kind == "dateTime" and not has_time):
        return moment.date().isoformat()
    if kind == "time":
        return moment.time().isoformat(timespec="seconds")
    local = moment.replace(tzinfo=mapping.format.timezone)
    return local.isoformat(timespec="seconds")


def put(resource: dict[str, Any], source: Source, value: Any) -> None:
    """Set the source's target element in ``resource`` (lists: item 0 unless [n] is given)."""
    node: Any = resource
    steps = source.target.steps[1:]
    for position, step in enumerate(steps):
        last = position == len(steps) - 1
        element = step.element
        if not element.is_list:
            if last:
                node[step.name] = value
                return
            node = node.setdefault(step.name, {})
            continue
        items = node.setdefault(step.name, [])
        if step.label is not None:
            found = next(
                (x for x in items if isinstance(x, dict) and x.get("url") == source.url), None
            )
            if found is None:
                found = {"url": source.url}
                items.append(found)
            node = found
            continue
        index = step.index or 0
        while len(items) <= index:
            items.append(None if element.kind == "primitive" else {})
        if last:
            items[index] = value
            return
        node = items[index]


# --- rows ----------------------------------------------------------------------------------------


@dataclass
class Row:
    number: int
    line: int
    cells: list[str]
    patient: dict[str, Any] | None = None
    resource: dict[str, Any] | None = None
    errors: list[Issue] = field(default_factory=list)
    warnings: list[Issue] = field(default_factory=list)


def _issue(row: Row, text: str, expression: str | None = None, severity: str = "error") -> Issue:
    return Issue(
        "value" if severity == "error" else "informational",
        f"row {row.number} (line {row.line}): {text}",
        severity,  # type: ignore[arg-type]
        (expression,) if expression else (),
    )


def build_row(row: Row, mapping: CsvMapping, feed: Feed, columns: dict[str, int]) -> None:
    """The row's Patient and resource (unchecked), or its errors."""
    values: dict[str, Any] = {}
    for name, source in mapping.patient.items():
        try:
            values[name] = cell_value(source, row.cells, columns, mapping)
        except CellError as error:
            row.errors.append(_issue(row, str(error), source.target.path))
    try:
        row_id = cell_value(mapping.row_id, row.cells, columns, mapping)
    except CellError as error:
        row.errors.append(_issue(row, str(error), f"{mapping.resource}.id"))
        row_id = _MISSING
    if row_id is _MISSING:
        row.errors.append(_issue(row, f"{mapping.row_id.column_text} (the row's id) is blank"))
    nhs = _nhs_number(row, mapping, values.get("nhs_number", _MISSING))
    local = values.get("local_id", _MISSING)
    if local is _MISSING and nhs is None:
        row.errors.append(_issue(row, "the row names no patient (no local id, no NHS number)"))
    if row.errors:
        return
    patient: dict[str, Any] = {"resourceType": "Patient"}
    source_id = str(local["value"]) if isinstance(local, dict) else f"nhs|{nhs}"
    patient["id"] = resource_id(feed.id, "Patient", source_id)
    identifiers = []
    if nhs is not None:
        identifiers.append({"system": NHS_NUMBER_SYSTEM, "value": nhs})
    if isinstance(local, dict):
        identifiers.append(local)
    patient["identifier"] = identifiers
    for name, value in values.items():
        if name in ("nhs_number", "local_id") or value is _MISSING:
            continue
        put(patient, mapping.patient[name], value)
    resource: dict[str, Any] = {
        "resourceType": mapping.resource,
        "id": resource_id(feed.id, mapping.resource, str(row_id)),
    }
    resource[mapping.patient_element] = {"reference": f"Patient/{patient['id']}"}
    for target, sources in ((patient, mapping.patient_elements), (resource, mapping.elements)):
        for source in sources:
            try:
                value = cell_value(source, row.cells, columns, mapping)
            except CellError as error:
                row.errors.append(_issue(row, str(error), source.target.path))
                continue
            if value is not _MISSING:
                put(target, source, value)
    if not row.errors:
        row.patient, row.resource = patient, resource


def _nhs_number(row: Row, mapping: CsvMapping, value: Any) -> str | None:
    if value is _MISSING:
        return None
    source = mapping.patient["nhs_number"]
    text = value["value"] if isinstance(value, dict) else str(value)
    canonical = normalise_nhs_number(text)
    if canonical and is_valid_nhs_number(canonical):
        return canonical
    message = f"{source.column_text}: {text!r} is not a valid NHS number"
    if source.invalid == "drop":
        row.warnings.append(_issue(row, f"{message}; left out", "Patient.identifier", "warning"))
        return None
    row.errors.append(_issue(row, message, "Patient.identifier"))
    return None


def merge_patients(rows: list[Row]) -> dict[str, dict[str, Any]]:
    """One Patient per id from the accepted rows, later rows winning, identifiers kept."""
    merged: dict[str, dict[str, Any]] = {}
    for row in rows:
        patient = row.patient
        if patient is None or row.errors:
            continue
        current = merged.get(patient["id"])
        if current is None:
            merged[patient["id"]] = orjson.loads(orjson.dumps(patient))
            continue
        for key, value in patient.items():
            if key == "identifier":
                systems = {i.get("system"): i for i in current.get("identifier", [])}
                for identifier in value:
                    systems[identifier.get("system")] = identifier
                current["identifier"] = list(systems.values())
            else:
                current[key] = value
    return merged


# --- reading the extract -------------------------------------------------------------------------


async def spool(request: Request, limit: int) -> IO[bytes]:
    """The request body in a temporary file (in memory while small), 413 past ``limit``."""
    import tempfile

    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise FhirError.single(413, "too-costly", f"extract larger than {limit} bytes")
    sink = tempfile.SpooledTemporaryFile(max_size=8 * 1024 * 1024)  # noqa: SIM115 - returned
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            sink.close()
            raise FhirError.single(413, "too-costly", f"extract larger than {limit} bytes")
        sink.write(chunk)
    sink.seek(0)
    return sink


def _rows(text: IO[str], mapping: CsvMapping) -> tuple[dict[str, int], Iterator[Row]]:
    reader = csv.reader(
        text, delimiter=mapping.format.delimiter, quotechar=mapping.format.quote, strict=True
    )
    try:
        header = next(reader)
    except StopIteration:
        raise FhirError.single(400, "required", "the extract is empty (no header row)") from None
    except (csv.Error, UnicodeDecodeError) as error:
        raise FhirError.single(
            400, "structure", f"the header row cannot be read: {error}"
        ) from None
    header = [h.strip().lstrip("\ufeff") for h in header]
    columns: dict[str, int] = {}
    duplicates = sorted({h for h in header if header.count(h) > 1 and h})
    for index, name in enumerate(header):
        columns.setdefault(name, index)
    missing = sorted(mapping.columns() - set(columns))
    problems = []
    if missing:
        problems.append(
            f"the header lacks the column(s) the mapping reads: {', '.join(map(repr, missing))}"
        )
    if duplicates:
        problems.append(f"the header repeats column(s) {', '.join(map(repr, duplicates))}")
    if problems:
        raise FhirError(422, [Issue("structure", p) for p in problems])

    def rows() -> Iterator[Row]:
        number = 0
        line = reader.line_num + 1
        while True:
            start = line
            try:
                cells = next(reader)
            except StopIteration:
                return
            except csv.Error as error:
                number += 1
                bad = Row(number, start, [])
                bad.errors.append(_issue(bad, f"cannot be read as CSV: {error}"))
                line = reader.line_num + 1
                yield bad
                continue
            line = reader.line_num + 1
            if not any(c.strip() for c in cells):
                continue
            number += 1
            yield Row(number, start, cells)

    return columns, rows()


@dataclass
class Report:
    feed: str
    extract: str | None
    rows: int = 0
    accepted: int = 0
    refused: int = 0
    outcome: Outcome = field(default_factory=Outcome)
    resources: Counter[str] = field(default_factory=Counter)
    errors: list[dict[str, Any]] = field(default_factory=list)
    warnings: list[dict[str, Any]] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "feed": self.feed,
            "extract": self.extract,
            "rows": self.rows,
            "accepted": self.accepted,
            "refused": self.refused,
            "resources": dict(sorted(self.resources.items())),
            "published": self.outcome.published,
            "unchanged": self.outcome.unchanged,
            "errors": self.errors,
            "warnings": self.warnings,
        }

    def outcome_of_failure(self) -> dict[str, Any]:
        issues = [
            Issue(i["code"], i["diagnostics"], i["severity"], tuple(i.get("expression", ())))
            for e in self.errors
            for i in e["issues"]
        ]
        summary = Issue("invalid", f"none of the {self.rows} rows could be taken", "error")
        return operation_outcome([summary, *issues])


async def receive_csv(
    ctx: ServiceContext,
    feed: Feed,
    mapping: CsvMapping,
    body: IO[bytes],
    pool: Pool,
    extract: str | None,
    parallel_threshold: int = 200,
) -> Report:
    """Turn an extract into resources, publish the good rows, report on every row."""
    assert ctx.db is not None
    report = Report(feed.id, extract)
    text = io.TextIOWrapper(body, encoding=mapping.format.encoding, newline="")
    columns, rows = _rows(text, mapping)
    header_line = ",".join(columns)
    chunk: list[Row] = []
    try:
        for row in rows:
            chunk.append(row)
            if len(chunk) >= CHUNK_ROWS:
                await _take_chunk(
                    ctx,
                    feed,
                    mapping,
                    columns,
                    chunk,
                    pool,
                    report,
                    parallel_threshold,
                    header_line,
                )
                chunk = []
        if chunk:
            await _take_chunk(
                ctx, feed, mapping, columns, chunk, pool, report, parallel_threshold, header_line
            )
    except UnicodeDecodeError as error:
        raise FhirError.single(
            400, "structure", f"the extract is not {mapping.format.encoding} text: {error}"
        ) from None
    return report


async def _take_chunk(
    ctx: ServiceContext,
    feed: Feed,
    mapping: CsvMapping,
    columns: dict[str, int],
    rows: list[Row],
    pool: Pool,
    report: Report,
    parallel_threshold: int,
    header_line: str,
) -> None:
    assert ctx.db is not None
    for row in rows:
        if not row.errors:
            build_row(row, mapping, feed, columns)
    built = [r for r in rows if not r.errors]
    # The rows' resources first; the patients once merged, below.
    items = [(r.resource, mapping.resource) for r in built if r.resource is not None]
    results = await pool.check_all(items, parallel=len(items) >= parallel_threshold)
    for row, issues in zip(built, results, strict=True):
        row.errors += [_located(row, issue) for issue in issues]
    patients = merge_patients(rows)
    patient_results = await pool.check_all(
        [(p, "Patient") for p in patients.values()], parallel=False
    )
    bad_patients = {
        pid: issues for pid, issues in zip(patients, patient_results, strict=True) if issues
    }
    for row in rows:
        if row.patient is not None and row.patient["id"] in bad_patients and not row.errors:
            row.errors += [_located(row, issue) for issue in bad_patients[row.patient["id"]]]
    patients = merge_patients(rows)  # again, without rows refused meanwhile
    good = [r for r in rows if not r.errors]
    # NHS numbers the feed sent before for a patient whose rows leave it blank.
    without = [f"Patient/{pid}" for pid, p in patients.items() if not _has_nhs(p)]
    known: dict[str, str] = {}
    if without:
        async with ctx.db.transaction() as session:
            known = await keys_of(session, patient_keys, without)
    for ref, key in known.items():
        if is_valid_nhs_number(key):
            patient = patients[ref.split("/", 1)[1]]
            patient["identifier"].insert(0, {"system": NHS_NUMBER_SYSTEM, "value": key})
    entries = [Entry(0, p, None, "PUT") for p in patients.values()]
    entries += [Entry(r.number, r.resource, None, "PUT") for r in good if r.resource is not None]
    finish(entries, {}, feed)
    keys = {f"Patient/{pid}": own_key(p, feed) for pid, p in patients.items()}
    outgoing_items = [outgoing(e.resource, keys[_patient_of(e.resource, mapping)]) for e in entries]
    headers = event_headers(source=feed.id, setting=feed.setting)
    outcome = await publish(ctx.db, ctx.bus.publish, feed, outgoing_items, headers)
    report.outcome.add(outcome)
    report.resources.update(e.resource_type for e in entries)
    report.rows += len(rows)
    report.accepted += len(good)
    refused = [r for r in rows if r.errors]
    report.refused += len(refused)
    for row in refused:
        report.errors.append(
            {"row": row.number, "line": row.line, "issues": [i.to_fhir() for i in row.errors]}
        )
    for row in good:
        if row.warnings:
            report.warnings.append(
                {"row": row.number, "line": row.line, "issues": [i.to_fhir() for i in row.warnings]}
            )
    await deadletters.keep(
        ctx,
        feed,
        [
            (_as_csv(header_line, row.cells), "; ".join(i.diagnostics for i in row.errors))
            for row in refused
        ],
        "POST /csv" + (f" {report.extract}" if report.extract else ""),
    )


def _located(row: Row, issue: Issue) -> Issue:
    text = f"row {row.number} (line {row.line}): {issue.diagnostics}"
    return Issue(issue.code, text, issue.severity, issue.expression)


def _patient_of(resource: dict[str, Any], mapping: CsvMapping) -> str:
    if resource["resourceType"] == "Patient":
        return f"Patient/{resource['id']}"
    return str(resource[mapping.patient_element]["reference"])


def _has_nhs(patient: dict[str, Any]) -> bool:
    return any(i.get("system") == NHS_NUMBER_SYSTEM for i in patient.get("identifier", []))


def _as_csv(header: str, cells: list[str]) -> bytes:
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\r\n").writerow(cells)
    return (header + "\r\n" + buffer.getvalue()).encode("utf-8")
