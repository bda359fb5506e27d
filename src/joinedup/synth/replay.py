"""``replay``: send a generated world to a running JoinedUp through its real ingest interfaces,
in the order the providers would have sent it.

* GP feeds: ``POST <url>/ingest-gp/fhir`` (``application/fhir+json``, the feed's bearer token).
* Hospital feeds: ``POST <url>/ingest-acute/hl7v2`` (``x-application/hl7-v2+er7``, bearer token,
  the answer an HL7 ACK) or MLLP (``hl7.mllp``; the ACK's MSA-1 decides).
* CSV feeds: ``POST <url>/ingest-gp/csv`` (``text/csv``), one extract file per request.

Messages leave in ``sent_at`` order across all feeds. With ``concurrency`` > 1 they are spread over
that many senders by patient key, so one person's messages still arrive in order. An endpoint that
does not exist (HTTP 404/405, or nothing listening for MLLP) is noted once and the rest of that kind
is counted as rejected (unavailable) without being sent, so a partial platform replays cleanly.
"""

from __future__ import annotations

import asyncio
import time
import zlib
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import orjson

from fhir_common.feeds import Feed, FeedRegistry
from fhir_common.settings import Settings
from joinedup.synth import output

FHIR_PATH = "/ingest-gp/fhir"
HL7_PATH = "/ingest-acute/hl7v2"
CSV_PATH = "/ingest-gp/csv"
HL7_MEDIA_TYPE = "x-application/hl7-v2+er7"
ACK_CODES = frozenset({"AA", "CA"})


@dataclass
class KindTally:
    sent: int = 0
    acknowledged: int = 0
    rejected: int = 0
    unavailable: int = 0  # counted in rejected too: never sent, the endpoint is not there


@dataclass
class Tally:
    kinds: dict[str, KindTally] = field(default_factory=dict)
    reasons: Counter[str] = field(default_factory=Counter)
    seconds: float = 0.0

    def of(self, kind: str) -> KindTally:
        return self.kinds.setdefault(kind, KindTally())

    @property
    def sent(self) -> int:
        return sum(k.sent for k in self.kinds.values())

    @property
    def acknowledged(self) -> int:
        return sum(k.acknowledged for k in self.kinds.values())

    @property
    def rejected(self) -> int:
        return sum(k.rejected for k in self.kinds.values())

    def as_dict(self) -> dict[str, Any]:
        return {
            "sent": self.sent,
            "acknowledged": self.acknowledged,
            "rejected": self.rejected,
            "seconds": round(self.seconds, 3),
            "kinds": {k: vars(v) for k, v in sorted(self.kinds.items())},
            "reasons": dict(self.reasons.most_common(20)),
        }


def parse_rate(text: str | None) -> float | None:
    """``500/s``, ``30/min``, ``500`` -> messages per second; None or empty for no limit."""
    if not text:
        return None
    number, _, unit = text.partition("/")
    value = float(number)
    per = {"": 1.0, "s": 1.0, "sec": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0}[unit.strip()]
    if value <= 0:
        raise ValueError("rate must be positive")
    return value / per


def register_feeds(directory: Path, data_dir: Path) -> dict[str, str]:
    """Register the generated feeds with an embedded instance's data dir; return their tokens."""
    from joinedup.tokens import feed_token

    registry = FeedRegistry(Settings(data_dir=data_dir).resolved_feeds_file())
    tokens: dict[str, str] = {}
    for feed in load_feeds(directory):
        registry.add(feed)
        tokens[feed.id] = feed_token(data_dir, feed)
    return tokens


def load_feeds(directory: Path) -> list[Feed]:
    return [Feed.model_validate(f) for f in orjson.loads((directory / "feeds.json").read_bytes())]


def load_tokens(path: Path) -> dict[str, str]:
    """A JSON object ``{feed id: bearer token}`` for replaying against a remote instance."""
    data = orjson.loads(path.read_bytes())
    if not isinstance(data, dict) or not all(isinstance(v, str) for v in data.values()):
        raise ValueError(f"{path} must hold a JSON object of feed id -> token")
    return {str(k): v for k, v in data.items()}


def messages(
    directory: Path, feeds: set[str] | None = None, since: str | None = None
) -> Iterator[dict[str, Any]]:
    """Every message of the directory, in send order (CSV: one per extract file).

    With ``since`` (an ISO timestamp), only the practices' initial load (everything sent before
    the feeds' start) and what was sent from ``since`` on: a recent slice of a long history.
    """
    manifest = output.read_manifest(directory)
    paths = [directory / f["file"] for f in manifest["feeds"] if feeds is None or f["id"] in feeds]
    initial_load = manifest["start"]
    for line in output.merged(paths):
        if since is not None:
            sent = output.sort_key(line).decode()
            if initial_load <= sent < since:
                continue
        yield orjson.loads(line)


def total_messages(directory: Path, feeds: set[str] | None = None) -> int:
    manifest = output.read_manifest(directory)
    return sum(f["lines"] for f in manifest["feeds"] if feeds is None or f["id"] in feeds)


class _Mllp:
    """One MLLP connection per sender, opened on first use."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.reader: Any = None
        self.writer: Any = None

    async def send(self, message: str) -> str:
        from hl7.mllp import open_hl7_connection

        if self.writer is None:
            self.reader, self.writer = await open_hl7_connection(self.host, self.port)
        self.writer.writeblock(message.encode("utf-8"))
        await self.writer.drain()
        ack = await asyncio.wait_for(self.reader.readmessage(), timeout=30)
        return str(ack)

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            await self.writer.wait_closed()


def ack_code(ack: str) -> str | None:
    """MSA-1 of an HL7 ACK (segments split by CR or LF), or None if there is no MSA."""
    for segment in ack.replace("\n", "\r").split("\r"):
        if segment.startswith("MSA|"):
            return segment.split("|")[1] if "|" in segment[4:] or len(segment) > 4 else None
    return None


class Replayer:
    def __init__(
        self,
        directory: Path,
        client: httpx.AsyncClient,
        tokens: dict[str, str],
        *,
        hl7_transport: str = "http",
        mllp: tuple[str, int] | None = None,
        concurrency: int = 4,
        rate: float | None = None,
        on_sent: Callable[[], None] | None = None,
    ) -> None:
        if hl7_transport not in ("http", "mllp"):
            raise ValueError("hl7 transport must be http or mllp")
        self.directory = directory
        self.client = client
        self.tokens = tokens
        self.hl7_transport = hl7_transport
        self.mllp = mllp
        self.concurrency = max(1, concurrency)
        self.rate = rate
        self.on_sent = on_sent
        self.tally = Tally()
        self.unavailable: dict[str, str] = {}

    async def run(
        self, feeds: set[str] | None = None, limit: int | None = None, since: str | None = None
    ) -> Tally:
        began = time.perf_counter()
        queues: list[asyncio.Queue[dict[str, Any] | None]] = [
            asyncio.Queue(maxsize=256) for _ in range(self.concurrency)
        ]
        senders = [asyncio.create_task(self._sender(q)) for q in queues]
        try:
            for number, message in enumerate(messages(self.directory, feeds, since)):
                if limit is not None and number >= limit:
                    break
                if self.rate:
                    delay = began + number / self.rate - time.perf_counter()
                    if delay > 0:
                        await asyncio.sleep(delay)
                slot = zlib.crc32(str(message["key"]).encode()) % self.concurrency
                await queues[slot].put(message)
        finally:
            for q in queues:
                await q.put(None)
            await asyncio.gather(*senders)
            self.tally.seconds = time.perf_counter() - began
        return self.tally

    async def _sender(self, queue: asyncio.Queue[dict[str, Any] | None]) -> None:
        mllp = _Mllp(*self.mllp) if self.mllp and self.hl7_transport == "mllp" else None
        try:
            while (message := await queue.get()) is not None:
                await self._send(message, mllp)
                if self.on_sent:
                    self.on_sent()
        finally:
            if mllp is not None:
                await mllp.close()

    async def _send(self, message: dict[str, Any], mllp: _Mllp | None) -> None:
        kind = str(message["kind"])
        tally = self.tally.of(kind)
        if kind in self.unavailable:
            tally.rejected += 1
            tally.unavailable += 1
            return
        token = self.tokens.get(str(message["feed"]))
        if token is None:
            tally.rejected += 1
            self.tally.reasons[f"no token for feed {message['feed']}"] += 1
            return
        tally.sent += 1
        try:
            ok, reason = await self._deliver(kind, message, token, mllp)
        except (TimeoutError, httpx.TransportError, OSError) as error:
            ok, reason = False, f"{kind}: {type(error).__name__}: {error}"
            if kind == "hl7v2" and mllp is not None and isinstance(error, ConnectionError):
                self.unavailable[kind] = reason
        if ok:
            tally.acknowledged += 1
        else:
            tally.rejected += 1
            self.tally.reasons[reason] += 1

    async def _deliver(
        self, kind: str, message: dict[str, Any], token: str, mllp: _Mllp | None
    ) -> tuple[bool, str]:
        headers = {"Authorization": f"Bearer {token}"}
        if kind == "fhir":
            headers["Content-Type"] = "application/fhir+json"
            response = await self.client.post(
                FHIR_PATH, content=orjson.dumps(message["body"]), headers=headers
            )
            return self._judge_http(kind, response)
        if kind == "hl7v2":
            if mllp is not None:
                code = ack_code(await mllp.send(message["body"]))
                return code in ACK_CODES, f"hl7v2: ACK {code}"
            headers["Content-Type"] = HL7_MEDIA_TYPE
            response = await self.client.post(
                HL7_PATH, content=message["body"].encode("utf-8"), headers=headers
            )
            ok, reason = self._judge_http(kind, response)
            code = ack_code(response.text) if ok else None
            if code is not None and code not in ACK_CODES:
                return False, f"hl7v2: ACK {code}"
            return ok, reason
        if kind == "csv":
            headers["Content-Type"] = "text/csv; charset=utf-8"
            headers["X-Extract-Name"] = Path(message["path"]).name
            body = (self.directory / message["path"]).read_bytes()
            response = await self.client.post(CSV_PATH, content=body, headers=headers)
            return self._judge_http(kind, response)
        return False, f"unknown kind {kind!r}"

    def _judge_http(self, kind: str, response: httpx.Response) -> tuple[bool, str]:
        if response.is_success:
            return True, ""
        if response.status_code in (404, 405):
            path = response.request.url.path
            reason = f"{kind}: endpoint {path} not available ({response.status_code})"
            self.unavailable[kind] = reason
            return False, reason
        return False, f"{kind}: HTTP {response.status_code}"


def mllp_address(url: str, port: int) -> tuple[str, int]:
    host = urlsplit(url).hostname or "127.0.0.1"
    return host, port
