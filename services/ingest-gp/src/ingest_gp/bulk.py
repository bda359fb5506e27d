"""Bulk import of NDJSON files in the style of the FHIR Bulk Data ``$import`` operation.

Kick-off (``POST /fhir/$import``) takes either an NDJSON body (``application/fhir+ndjson``,
spooled to disk under the import directory as it arrives) or a ``Parameters`` resource naming
``input`` files by ``file://`` URL. Only files under the configured import directory are read,
and nothing is ever fetched from the network. It answers 202 with ``Content-Location``: the
job's status URL. ``GET`` on it answers 202 with ``X-Progress`` while the job runs, 200 with the
report (counts per resource type, every refused line with its line number and OperationOutcome)
when it is done; ``DELETE`` cancels it.

A job is a row in ``ingest_gp.import_jobs``, so its status outlives the request and the process.
It runs as a task of the service: the file is read a batch of lines at a time (memory stays
bounded whatever the file's size), each batch is parsed, checked and normalised in the
validation pool (``workers.prepare_lines``; several batches in flight, one per worker and one
more), and published in file order, each batch in one atomic publication of what changed
(``publishing``). After each batch the job's position (input, byte offset, line) and counts are
checkpointed together with the digests of what was published.

Restarts: a job interrupted by a restart (or by the death of the replica running it) is
**resumed** from its last checkpoint, by the next process of the service that starts or notices
it (a job whose heartbeat is older than ``STALE_AFTER``). Because publication is idempotent,
lines between the checkpoint and the interruption are published at most once more. An uploaded
body survives in the import directory until its job ends, so it can be resumed too (replicas
must share that directory to adopt each other's uploads).
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import logging
import os
import re
import socket
import time
import uuid
from collections import Counter, deque
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import orjson
from fastapi import Request
from sqlalchemy import delete, insert, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from fhir_common.auth import Principal, parse_scopes
from fhir_common.errors import FhirError, Issue
from fhir_common.events import event_headers
from fhir_common.feeds import Feed
from fhir_common.patient_directory import keys_of
from fhir_common.service import ServiceContext
from ingest_gp import deadletters
from ingest_gp.patients import key_of
from ingest_gp.pool import Pool
from ingest_gp.publishing import Outcome, Outgoing, known_sources, publish, source_digest
from ingest_gp.settings import IngestGpSettings
from ingest_gp.tables import import_errors, import_jobs, patient_keys
from ingest_gp.workers import Bad, Good, prepare_lines

log = logging.getLogger(__name__)

NDJSON_TYPES = ("application/fhir+ndjson", "application/ndjson", "application/x-ndjson")
ACTIVE = ("queued", "running")
HEARTBEAT_EVERY = 10.0  # seconds
MAX_ATTEMPTS = 5  # interruptions (bus or database away) before a job is failed
STOP_TIMEOUT = 15.0  # seconds a job gets to finish its batch when stopped or cancelled
STALE_AFTER = timedelta(seconds=60)  # a running job not heard of for this long is adopted
BATCH_BYTES = 8 * 1024 * 1024  # a batch ends after this many bytes even if short of lines


def _now() -> datetime:
    return datetime.now(UTC)


def _aware(moment: datetime | None) -> datetime | None:
    """SQLite gives naive datetimes back: they were written in UTC."""
    if moment is not None and moment.tzinfo is None:
        return moment.replace(tzinfo=UTC)
    return moment


# --- kick-off ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Input:
    path: str
    type: str | None = None
    url: str | None = None  # as the Parameters named it; None for an upload

    def to_json(self) -> dict[str, Any]:
        return {"path": self.path, "type": self.type, "url": self.url}


def import_root(settings: IngestGpSettings) -> Path:
    root = settings.import_dir()
    root.mkdir(parents=True, exist_ok=True)
    return root.resolve()


def inputs_from_parameters(params: Any, root: Path) -> tuple[list[Input], str | None]:
    """The files a ``Parameters`` kick-off names, each checked to be a file under ``root``."""
    if not isinstance(params, dict) or params.get("resourceType") != "Parameters":
        found = params.get("resourceType") if isinstance(params, dict) else type(params).__name__
        raise FhirError.single(
            400, "invalid", f"expected Parameters, got {found!r}", ["Parameters"]
        )
    issues: list[Issue] = []
    inputs: list[Input] = []
    source: str | None = None
    parameters = params.get("parameter")
    for i, parameter in enumerate(parameters if isinstance(parameters, list) else []):
        where = f"Parameters.parameter[{i}]"
        if not isinstance(parameter, dict):
            issues.append(Issue("structure", f"{where}: not an object", expression=(where,)))
            continue
        name = parameter.get("name")
        if name == "inputFormat":
            value = _value(parameter)
            if value not in (None, *NDJSON_TYPES):
                text = f"{where}: inputFormat {value!r} is not supported (application/fhir+ndjson)"
                issues.append(Issue("not-supported", text, expression=(f"{where}.valueCode",)))
        elif name == "inputSource":
            source = _value(parameter)
        elif name == "input":
            found = _input(parameter, where, root, issues)
            if found is not None:
                inputs.append(found)
        elif name in ("storageDetail", "mode"):
            continue
        else:
            text = f"{where}: parameter {name!r} is not understood"
            issues.append(Issue("not-supported", text, expression=(f"{where}.name",)))
    if not inputs and not issues:
        issues.append(
            Issue("required", "Parameters: no input given", expression=("Parameters.parameter",))
        )
    if issues:
        raise FhirError(400, issues)
    return inputs, source


def _value(parameter: dict[str, Any]) -> str | None:
    for key, value in parameter.items():
        if key.startswith("value") and isinstance(value, str):
            return value
    return None


def _input(parameter: dict[str, Any], where: str, root: Path, issues: list[Issue]) -> Input | None:
    parts = parameter.get("part")
    type_: str | None = None
    url: str | None = None
    url_where = f"{where}.part"
    for j, part in enumerate(parts if isinstance(parts, list) else []):
        if not isinstance(part, dict):
            continue
        if part.get("name") == "type":
            type_ = _value(part)
        elif part.get("name") == "url":
            url = _value(part)
            url_where = f"{where}.part[{j}].value"
    if url is None:
        issues.append(
            Issue("required", f"{where}: input without a url part", expression=(f"{where}.part",))
        )
        return None
    path = _local_file(url, root)
    if isinstance(path, str):
        issues.append(
            Issue(
                "security" if "outside" in path else "not-found",
                f"{url_where}: {path}",
                expression=(url_where,),
            )
        )
        return None
    return Input(path=str(path), type=type_, url=url)


def _local_file(url: str, root: Path) -> Path | str:
    """The file a ``file://`` URL names, if it is a regular file under ``root`` (else why not)."""
    parts = urlsplit(url)
    if parts.scheme != "file":
        return f"{url!r}: only file:// URLs under the import directory are read"
    if parts.netloc not in ("", "localhost"):
        return f"{url!r}: a file:// URL must name a local file"
    path = Path(unquote(parts.path)).resolve()
    if not path.is_relative_to(root):
        return f"{url!r} is outside the import directory"
    if not path.is_file():
        return f"{url!r}: no such file"
    return path


async def spool_upload(request: Request, root: Path, job_id: str, limit: int) -> tuple[Path, int]:
    """Write the request body to ``root/uploads/<job>.ndjson`` as it arrives (413 over limit)."""
    uploads = root / "uploads"
    uploads.mkdir(parents=True, exist_ok=True)
    target = uploads / f"{job_id}.ndjson"
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise FhirError.single(413, "too-costly", f"upload larger than {limit} bytes")
    size = 0
    try:
        with target.open("wb") as sink:
            async for chunk in request.stream():
                size += len(chunk)
                if size > limit:
                    raise FhirError.single(413, "too-costly", f"upload larger than {limit} bytes")
                await asyncio.to_thread(sink.write, chunk)
    except BaseException:
        target.unlink(missing_ok=True)
        raise
    return target, size


# --- reading NDJSON ------------------------------------------------------------------------------


@dataclass
class Batch:
    start: int  # byte offset of its first line
    end: int  # byte offset after its last line
    first_line: int
    lines: list[tuple[int, bytes]]
    too_long: list[int]  # line numbers skipped for their length
    digests: dict[int, str] = field(default_factory=dict)  # line -> digest of the line as sent
    skipped: Counter[str] = field(default_factory=Counter)  # unchanged lines, per type


class LineReader:
    """Batches of lines from a byte offset on, never holding more than one batch."""

    def __init__(self, path: Path, offset: int, line: int, batch: int, max_line: int) -> None:
        self.file = path.open("rb")
        self.file.seek(offset)
        self.offset = offset
        self.line = line
        self.batch = batch
        self.max_line = max_line

    def next_batch(self) -> Batch | None:
        lines: list[tuple[int, bytes]] = []
        too_long: list[int] = []
        start, first, size = self.offset, self.line + 1, 0
        while len(lines) < self.batch and size < BATCH_BYTES:
            raw = self.file.readline(self.max_line + 1)
            if not raw:
                break
            self.line += 1
            self.offset += len(raw)
            if len(raw) > self.max_line and not raw.endswith(b"\n"):
                too_long.append(self.line)
                while raw and not raw.endswith(b"\n"):  # skip the rest of the line
                    raw = self.file.readline(1024 * 1024)
                    self.offset += len(raw)
                continue
            stripped = raw.strip()
            if stripped:
                lines.append((self.line, stripped))
                size += len(stripped)
        if not lines and not too_long:
            return None
        return Batch(start, self.offset, first, lines, too_long)

    def close(self) -> None:
        self.file.close()


# --- jobs ----------------------------------------------------------------------------------------


def _empty_progress() -> dict[str, Any]:
    return {
        "lines": 0,
        "resources": 0,
        "published": 0,
        "unchanged": 0,
        "failed": 0,
        "bytes": 0,
        "by_type": {},
        "inputs": [],
    }


class Importer:
    """Runs this process's import jobs and adopts those left behind by others."""

    def __init__(self, ctx: ServiceContext, pool: Pool, settings: IngestGpSettings) -> None:
        assert ctx.db is not None
        self.ctx = ctx
        self.db = ctx.db
        self.pool = pool
        self.settings = settings
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.tasks: dict[str, asyncio.Task[None]] = {}
        self._watcher: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()  # the service stops: let every job go
        self._cancelled: set[str] = set()  # jobs DELETEd while running here
        self._bus_checked_at = -1e9
        self._bus_was_ready = False

    # -- lifecycle --
    async def start(self) -> None:
        self._watcher = asyncio.create_task(self._watch(), name="ingest-gp-import-watch")

    async def stop(self) -> None:
        """Stop running; our unfinished jobs are let go, so the next start resumes them.

        Each job finishes the batch in hand (its checkpoint is written), up to
        ``STOP_TIMEOUT``; only then is it cancelled outright.
        """
        self._stopping.set()
        if self._watcher is not None:
            self._watcher.cancel()
            await asyncio.gather(self._watcher, return_exceptions=True)
        mine = list(self.tasks)
        running = [t for t in self.tasks.values() if not t.done()]
        if running:
            _, late = await asyncio.wait(running, timeout=STOP_TIMEOUT)
            for task in late:
                task.cancel()
            await asyncio.gather(*late, return_exceptions=True)
        self.tasks.clear()
        if mine:
            with contextlib.suppress(Exception):
                async with self.db.transaction() as session:
                    await session.execute(
                        update(import_jobs)
                        .where(import_jobs.c.id.in_(mine), import_jobs.c.owner == self.owner)
                        .values(owner=None, heartbeat_at=None)
                    )

    async def _watch(self) -> None:
        """Heartbeat our jobs and adopt jobs whose owner stopped beating (or let them go)."""
        while True:
            ready = await self._bus_ready()
            try:
                await self._heartbeat()
                if ready:
                    await self._adopt()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("import job watch failed")
            # Until the bus runs (it starts after the service), look again soon.
            await asyncio.sleep(HEARTBEAT_EVERY if ready else 0.2)

    async def _bus_ready(self) -> bool:
        """Whether the bus answers (asked at most once a second: a Kafka ping is a request)."""
        now = time.monotonic()
        if self._bus_was_ready and now - self._bus_checked_at < 1.0:
            return True
        try:
            await self.ctx.bus.ping()
        except Exception:
            self._bus_was_ready = False
        else:
            self._bus_was_ready = True
        self._bus_checked_at = time.monotonic()
        return self._bus_was_ready

    async def _bus_waited_for(self, seconds: float = 30.0) -> bool:
        """Whether the bus answers, waiting a while for it unless the service is stopping."""
        deadline = time.monotonic() + seconds
        while not await self._bus_ready():
            if self._stopping.is_set() or time.monotonic() > deadline:
                return False
            await asyncio.sleep(0.5)
        return True

    async def _heartbeat(self) -> None:
        mine = [job for job, task in self.tasks.items() if not task.done()]
        if not mine:
            return
        async with self.db.transaction() as session:
            await session.execute(
                update(import_jobs)
                .where(import_jobs.c.id.in_(mine), import_jobs.c.owner == self.owner)
                .values(heartbeat_at=_now())
            )

    async def _adopt(self) -> None:
        cutoff = _now() - STALE_AFTER
        async with self.db.transaction() as session:
            rows = (
                await session.execute(
                    select(import_jobs.c.id, import_jobs.c.heartbeat_at).where(
                        import_jobs.c.status.in_(ACTIVE)
                    )
                )
            ).all()
        for row in rows:
            heartbeat = _aware(row.heartbeat_at)
            if row.id in self.tasks or (heartbeat is not None and heartbeat > cutoff):
                continue
            async with self.db.transaction() as session:
                claimed = await session.execute(
                    update(import_jobs)
                    .where(
                        import_jobs.c.id == row.id,
                        import_jobs.c.status.in_(ACTIVE),
                        (import_jobs.c.heartbeat_at.is_(None))
                        | (import_jobs.c.heartbeat_at < cutoff),
                    )
                    .values(owner=self.owner, heartbeat_at=_now())
                )
            if claimed.rowcount == 1:  # type: ignore[attr-defined]
                log.info("resuming import job", extra={"job": row.id})
                self._spawn(row.id)

    def _spawn(self, job_id: str) -> None:
        self.tasks[job_id] = asyncio.create_task(self._run(job_id), name=f"import:{job_id}")

    # -- kick-off, status, cancel --
    async def create(
        self,
        feed: Feed,
        principal: Principal,
        inputs: list[Input],
        *,
        job_id: str | None = None,
        uploaded: bool = False,
        source: str | None = None,
        request_url: str = "",
    ) -> str:
        job_id = job_id or str(uuid.uuid4())
        total = sum([await asyncio.to_thread(os.path.getsize, i.path) for i in inputs])
        now = _now()
        request = {
            "inputs": [i.to_json() for i in inputs],
            "uploaded": uploaded,
            "inputSource": source,
            "scopes": [str(s) for s in principal.scopes],
            "url": request_url,
        }
        async with self.db.transaction() as session:
            await session.execute(
                insert(import_jobs).values(
                    id=job_id,
                    feed=feed.id,
                    status="queued",
                    created_at=now,
                    updated_at=now,
                    heartbeat_at=now,
                    owner=self.owner,
                    request=request,
                    position={"input": 0, "offset": 0, "line": 0},
                    progress=_empty_progress(),
                    total_bytes=total,
                )
            )
        self._spawn(job_id)
        return job_id

    async def job(self, job_id: str, feed: Feed) -> Any:
        async with self.db.transaction() as session:
            row = (
                await session.execute(select(import_jobs).where(import_jobs.c.id == job_id))
            ).first()
        if row is None or row.feed != feed.id:
            raise FhirError.single(404, "not-found", f"no import job {job_id}")
        return row

    async def errors(self, job_id: str) -> list[dict[str, Any]]:
        async with self.db.transaction() as session:
            rows = await session.execute(
                select(import_errors)
                .where(import_errors.c.job_id == job_id)
                .order_by(import_errors.c.input, import_errors.c.line)
            )
            return [{"input": r.input, "line": r.line, "outcome": r.outcome} for r in rows]

    async def cancel(self, job_id: str, feed: Feed) -> str:
        """Cancel a queued or running job, or forget a finished one; its status before."""
        row = await self.job(job_id, feed)
        async with self.db.transaction() as session:
            if row.status in ACTIVE:
                await session.execute(
                    update(import_jobs)
                    .where(import_jobs.c.id == job_id, import_jobs.c.status.in_(ACTIVE))
                    .values(status="cancelled", updated_at=_now())
                )
            else:
                await session.execute(delete(import_errors).where(import_errors.c.job_id == job_id))
                await session.execute(delete(import_jobs).where(import_jobs.c.id == job_id))
        task = self.tasks.get(job_id)
        if task is not None and not task.done():
            self._cancelled.add(job_id)  # it stops after the batch in hand
            with contextlib.suppress(Exception):
                await asyncio.wait_for(asyncio.shield(task), timeout=STOP_TIMEOUT)
        elif row.status in ACTIVE:
            self._remove_upload(row.request)  # running elsewhere or not at all
        return str(row.status)

    # -- running --
    async def _run(self, job_id: str) -> None:
        try:
            await self._process(job_id)
        except (OSError, ValueError) as error:  # the input itself: no point trying again
            log.exception("import job failed", extra={"job": job_id})
            await self._set_final(job_id, "failed", f"{type(error).__name__}: {error}")
        except Exception as error:
            await self._retry_later(job_id, error)
        finally:
            self.tasks.pop(job_id, None)
            self._cancelled.discard(job_id)

    async def _retry_later(self, job_id: str, error: Exception) -> None:
        """A failure that may pass (the bus or the database away): let the job be adopted
        again after a pause, up to ``MAX_ATTEMPTS`` times, then fail it."""
        text = f"{type(error).__name__}: {error}"
        try:
            async with self.db.transaction() as session:
                row = (
                    await session.execute(
                        select(import_jobs.c.progress).where(import_jobs.c.id == job_id)
                    )
                ).first()
            progress = dict(row.progress) if row else _empty_progress()
            attempts = int(progress.get("attempts", 0)) + 1
            if attempts >= MAX_ATTEMPTS:
                log.error("import job failed", extra={"job": job_id, "error": text})
                await self._set_final(job_id, "failed", f"{text} (after {attempts} attempts)")
                return
            progress["attempts"] = attempts
            log.warning(
                "import job interrupted; it will be resumed",
                extra={"job": job_id, "error": text, "attempt": attempts},
            )
            async with self.db.transaction() as session:
                # a heartbeat in the past: adopted (by us or another replica) in a while
                await session.execute(
                    update(import_jobs)
                    .where(import_jobs.c.id == job_id, import_jobs.c.owner == self.owner)
                    .values(progress=progress, error=text, heartbeat_at=_now() - STALE_AFTER / 2)
                )
        except Exception:
            log.exception("import job could not be set aside", extra={"job": job_id})

    def _should_stop(self, job_id: str) -> bool:
        return self._stopping.is_set() or job_id in self._cancelled

    async def _process(self, job_id: str) -> None:
        async with self.db.transaction() as session:
            row = (
                await session.execute(select(import_jobs).where(import_jobs.c.id == job_id))
            ).first()
            if row is None or row.status not in ACTIVE:
                return
            await session.execute(
                update(import_jobs)
                .where(import_jobs.c.id == job_id)
                .values(status="running", updated_at=_now())
            )
        feed = self.ctx.feeds.get(row.feed)
        if feed is None:
            await self._set_final(job_id, "failed", f"feed {row.feed!r} is no longer registered")
            return
        request = dict(row.request)
        inputs = [Input(**i) for i in request["inputs"]]
        position = dict(row.position)
        progress = dict(row.progress)
        allowed = parse_scopes(" ".join(request.get("scopes", [])))
        principal = Principal(subject=f"feed:{feed.id}", scopes=allowed, feed=feed.id)
        for number in range(int(position["input"]), len(inputs)):
            item = inputs[number]
            if not await asyncio.to_thread(os.path.isfile, item.path):
                raise FileNotFoundError(f"input {number} ({item.url or 'upload'}) is gone")
            offset = int(position["offset"]) if number == position["input"] else 0
            line = int(position["line"]) if number == position["input"] else 0
            stopped = await self._import_file(
                job_id, feed, principal, number, item, offset, line, progress
            )
            if stopped:
                if job_id in self._cancelled:
                    self._remove_upload(request)
                return
            position = {"input": number + 1, "offset": 0, "line": 0}
        await self._set_final(job_id, "completed", None, progress)
        self._remove_upload(request)

    async def _import_file(
        self,
        job_id: str,
        feed: Feed,
        principal: Principal,
        number: int,
        item: Input,
        offset: int,
        line: int,
        progress: dict[str, Any],
    ) -> bool:
        """Import one input from ``offset``; True if the job was stopped (cancelled, taken)."""
        reader = LineReader(
            Path(item.path),
            offset,
            line,
            self.settings.ingest_gp_import_batch,
            self.settings.ingest_gp_max_line_bytes,
        )
        try:
            async for batch, (good, bad) in self._prepared(reader, feed, item.type):
                bad = bad + [
                    (n, [_too_long(self.settings.ingest_gp_max_line_bytes)]) for n in batch.too_long
                ]
                if not await self._bus_waited_for():
                    # The bus stopped (the service is stopping) or is away: stop here, before
                    # this batch; it is resumed from the checkpoint (by whoever adopts the job).
                    if self._stopping.is_set():
                        return True
                    raise RuntimeError("the bus is not available")
                if not await self._publish_batch(
                    job_id, feed, principal, number, batch, good, bad, progress
                ):
                    return True
                if self._should_stop(job_id):
                    return True
        finally:
            reader.close()
        return False

    async def _prepared(
        self, reader: LineReader, feed: Feed, expected: str | None
    ) -> AsyncIterator[tuple[Batch, tuple[list[Good], list[Bad]]]]:
        """Batches in file order, prepared in the pool with a few in flight at once."""
        in_flight: deque[tuple[Batch, asyncio.Future[tuple[list[Good], list[Bad]]]]]
        in_flight = deque()
        # Enough batches prepared ahead that the workers keep busy while one is published.
        depth = 2 * max(1, self.pool.processes) + 2
        exhausted = False
        try:
            while True:
                while not exhausted and len(in_flight) < depth:
                    batch = await asyncio.to_thread(reader.next_batch)
                    if batch is None:
                        exhausted = True
                        break
                    todo = await self._not_seen(batch, feed, expected)
                    work = asyncio.ensure_future(self.pool.run(prepare_lines, feed, expected, todo))
                    in_flight.append((batch, work))
                if not in_flight:
                    return
                batch, done = in_flight.popleft()
                yield batch, await done
        finally:
            for _, pending in in_flight:
                pending.cancel()

    async def _not_seen(
        self, batch: Batch, feed: Feed, expected: str | None
    ) -> list[tuple[int, bytes]]:
        """The lines of ``batch`` not already published exactly as they are.

        A line whose digest made the resource as it was last published is skipped before any
        checking (counted unchanged): a file imported again costs a hash a line.
        """
        batch.digests = {n: source_digest(feed.id, expected, line) for n, line in batch.lines}
        async with self.db.transaction() as session:
            known = await known_sources(session, batch.digests.values())
        if not known:
            return batch.lines
        todo: list[tuple[int, bytes]] = []
        for number, line in batch.lines:
            if batch.digests[number] in known:
                batch.skipped[_type_of(line)] += 1
            else:
                todo.append((number, line))
        return todo

    async def _publish_batch(
        self,
        job_id: str,
        feed: Feed,
        principal: Principal,
        number: int,
        batch: Batch,
        good: list[Good],
        bad: list[Bad],
        progress: dict[str, Any],
    ) -> bool:
        """Publish one batch and checkpoint it; False if the job is no longer ours to run."""
        bad = list(bad)
        allowed: list[Good] = []
        for made in good:
            if principal.allows(made[1], "u"):
                allowed.append(made)
            else:
                text = f"this token may not create or update {made[1]} (needs {made[1]}.u)"
                bad.append((made[0], [Issue("forbidden", text).to_fhir()]))
        keys = {f"Patient/{m[2]}": m[4] for m in allowed if m[4] is not None}
        wanted = {m[3] for m in allowed if m[3] and m[3] not in keys}
        if wanted:
            async with self.db.transaction() as session:
                keys |= await keys_of(session, patient_keys, wanted)
        items = [
            Outgoing(m[1], m[2], key_of(feed, m[1], m[2], m[3], keys), m[5], m[6]) for m in allowed
        ]
        headers = event_headers(source=feed.id, setting=feed.setting)
        by_type = Counter(m[1] for m in allowed)
        still_ours = True

        async def checkpoint(session: AsyncSession, outcome: Outcome) -> None:
            nonlocal still_ours
            skipped = sum(batch.skipped.values())
            progress["lines"] += len(batch.lines) + len(batch.too_long)
            progress["resources"] += len(allowed) + skipped
            progress["published"] += outcome.published
            progress["unchanged"] += outcome.unchanged + skipped
            progress["failed"] += len(bad)
            progress["bytes"] = progress.get("bytes", 0) + (batch.end - batch.start)
            types = Counter(progress["by_type"])
            types.update(by_type)
            types.update(batch.skipped)
            progress["by_type"] = dict(types)
            kept = await _count_errors(session, job_id)
            room = self.settings.ingest_gp_import_errors_kept - kept
            rows = [
                {
                    "job_id": job_id,
                    "input": number,
                    "line": n,
                    "outcome": {"resourceType": "OperationOutcome", "issue": issues},
                }
                for n, issues in sorted(bad)[: max(0, room)]
            ]
            if rows:
                await session.execute(insert(import_errors), rows)
            result = await session.execute(
                update(import_jobs)
                .where(
                    import_jobs.c.id == job_id,
                    import_jobs.c.status == "running",
                    import_jobs.c.owner == self.owner,
                )
                .values(
                    position={"input": number, "offset": batch.end, "line": reader_line(batch)},
                    progress=progress,
                    heartbeat_at=_now(),
                    updated_at=_now(),
                )
            )
            still_ours = result.rowcount == 1  # type: ignore[attr-defined]
            if not still_ours:
                raise _NotOursError

        if bad:
            originals = dict(batch.lines)
            await deadletters.keep(
                self.ctx,
                feed,
                [
                    (originals.get(n, b""), "; ".join(str(i.get("diagnostics")) for i in issues))
                    for n, issues in bad
                ],
                f"$import {job_id} input {number}",
            )
        saved = copy.deepcopy(progress)
        try:
            await publish(self.db, self.ctx.bus.publish, feed, items, headers, after=checkpoint)
        except _NotOursError:
            progress.clear()
            progress.update(saved)
            return False
        return still_ours

    async def _set_final(
        self, job_id: str, status: str, error: str | None, progress: dict[str, Any] | None = None
    ) -> None:
        values: dict[str, Any] = {"status": status, "updated_at": _now(), "error": error}
        if progress is not None:
            values["progress"] = progress
        async with self.db.transaction() as session:
            await session.execute(
                update(import_jobs)
                .where(import_jobs.c.id == job_id, import_jobs.c.status.in_(ACTIVE))
                .values(**values)
            )
            row = (
                await session.execute(
                    select(import_jobs.c.request).where(import_jobs.c.id == job_id)
                )
            ).first()
        if row is not None and status != "completed":
            self._remove_upload(row.request)

    def _remove_upload(self, request: Any) -> None:
        if request and request.get("uploaded"):
            for item in request.get("inputs", []):
                Path(item["path"]).unlink(missing_ok=True)


class _NotOursError(Exception):
    """The job was cancelled, or taken over, while this batch was in hand."""


_RESOURCE_TYPE = re.compile(rb'\{\s*"resourceType"\s*:\s*"([A-Za-z]+)"')


def _type_of(line: bytes) -> str:
    """A line's resource type, cheaply (it was valid when it was published)."""
    match = _RESOURCE_TYPE.match(line)
    if match:
        return match.group(1).decode()
    data = orjson.loads(line)
    return str(data.get("resourceType")) if isinstance(data, dict) else "?"


def reader_line(batch: Batch) -> int:
    last = batch.lines[-1][0] if batch.lines else 0
    return max(last, *(batch.too_long or [0]))


def _too_long(limit: int) -> dict[str, Any]:
    return Issue("too-long", f"line longer than {limit} bytes; skipped").to_fhir()


async def _count_errors(session: AsyncSession, job_id: str) -> int:
    from sqlalchemy import func

    count = await session.scalar(
        select(func.count()).select_from(import_errors).where(import_errors.c.job_id == job_id)
    )
    return int(count or 0)


# --- what the status endpoint says ---------------------------------------------------------------


def progress_text(row: Any) -> str:
    progress = row.progress
    done = int(progress.get("bytes", 0))
    total = int(row.total_bytes or 0)
    share = f" ({100 * done / total:.0f}% of {total} bytes)" if total else ""
    return (
        f"{row.status}: {progress.get('lines', 0)} lines read{share}; "
        f"{progress.get('published', 0)} published, {progress.get('unchanged', 0)} unchanged, "
        f"{progress.get('failed', 0)} refused"
    )


def report(row: Any, errors: list[dict[str, Any]], status_url: str) -> dict[str, Any]:
    progress = row.progress
    request = row.request
    created = _aware(row.created_at)
    return {
        "transactionTime": created.isoformat() if created else None,
        "request": request.get("url") or status_url,
        "requiresAccessToken": True,
        "status": row.status,
        "inputSource": request.get("inputSource"),
        "input": [
            {"type": i.get("type"), "url": i.get("url") or "upload"} for i in request["inputs"]
        ],
        "lines": progress.get("lines", 0),
        "resources": progress.get("resources", 0),
        "published": progress.get("published", 0),
        "unchanged": progress.get("unchanged", 0),
        "failed": progress.get("failed", 0),
        "output": [{"type": t, "count": n} for t, n in sorted(progress.get("by_type", {}).items())],
        "error": errors,
        "errorsTruncated": len(errors) < int(progress.get("failed", 0)),
    }


def iter_inputs(request: Any) -> Iterator[Input]:
    for item in request.get("inputs", []):
        yield Input(**item)
