"""The MLLP listener: HL7 v2 over TCP, one ACK for each message, many senders at once.

python-hl7's asyncio MLLP support provides the stream protocol, the writer (``writeblock``
frames an ACK in 0x0B ... 0x1C 0x0D) and the framing constants. Its ``readblock`` is not
enough for a server facing real senders, though: it throws away the bytes of a bad block
(which must go to the dead-letter topic), has no notion of a message that stalls half-way,
and after an oversized block it loses its place. ``FramingReader`` reads blocks with those
cases told apart, still on the stream reader's own ``readexactly``/``readuntil``:

* a block within the size limit is a message;
* a block over ``mllp_max_message_bytes`` is refused (AR); its first bytes are dead-lettered
  and the rest is read and discarded, so the connection carries on at the next block;
* bytes that do not start with 0x0B are refused as junk, and the connection carries on;
* a block cut short (the peer closes, or sends nothing for ``mllp_message_timeout_seconds``)
  is refused as truncated, dead-lettered, and the connection closed;
* a connection silent for ``mllp_idle_timeout_seconds`` between messages is closed.

Each connection is served by its own task, one message at a time (so its messages reach
Kafka in the order sent); connections beyond ``mllp_max_connections`` are closed at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from dataclasses import dataclass

from hl7.mllp import HL7StreamProtocol, HL7StreamReader, HL7StreamWriter
from hl7.mllp.streams import CARRIAGE_RETURN, END_BLOCK, START_BLOCK

from ingest_acute.intake import Arrival, Intake
from ingest_acute.outcome import ErrorCode, Problem
from ingest_acute.settings import IngestAcuteSettings

log = logging.getLogger(__name__)

BLOCK_END = END_BLOCK + CARRIAGE_RETURN
KEPT_OF_OVERSIZED = 64 * 1024  # bytes of an oversized message kept on the dead-letter topic
WRITE_TIMEOUT = 30.0
_SECOND_HEADER = re.compile(rb"[\r\n]MSH")


@dataclass(frozen=True)
class Block:
    """What came off the wire: ``kind`` is message, oversized, junk, truncated or closed."""

    kind: str
    data: bytes = b""
    size: int = 0


class FramingReader(HL7StreamReader):
    async def next_block(self, idle_timeout: float, message_timeout: float) -> Block:
        try:
            first = await asyncio.wait_for(self.readexactly(1), idle_timeout)
        except asyncio.IncompleteReadError:
            return Block("closed")
        except TimeoutError:
            return Block("closed", size=-1)
        lead = b"" if first == START_BLOCK else first  # what is kept of the bytes read so far
        try:
            async with asyncio.timeout(message_timeout):
                rest = await self._through_block_end()
        except asyncio.IncompleteReadError as cut:
            return Block("truncated", lead + cut.partial)
        except TimeoutError:
            return Block("truncated", lead + self._take_buffered())
        except _OversizedBlockError as oversized:
            return Block("oversized", (lead + oversized.kept)[:KEPT_OF_OVERSIZED], oversized.size)
        if lead:
            return Block("junk", lead + rest)
        return Block("message", rest[: -len(BLOCK_END)])

    async def _through_block_end(self) -> bytes:
        try:
            return await self.readuntil(BLOCK_END)
        except asyncio.LimitOverrunError as overrun:
            # Keep the start of it for the dead-letter topic, then skip to the block's end.
            head = await self.readexactly(overrun.consumed)
            size = len(head) + await self._discard_through_block_end()
            raise _OversizedBlockError(head[:KEPT_OF_OVERSIZED], size) from None

    async def _discard_through_block_end(self) -> int:
        """Read and drop the rest of an oversized block; how many bytes of it there were."""
        dropped = 0
        while True:
            try:
                tail = await self.readuntil(BLOCK_END)
                return dropped + len(tail) - len(BLOCK_END)
            except asyncio.LimitOverrunError as overrun:
                await self.readexactly(overrun.consumed)
                dropped += overrun.consumed
            except asyncio.IncompleteReadError as cut:
                return dropped + len(cut.partial)

    def _take_buffered(self) -> bytes:
        """Whatever has arrived and not been read (an incomplete block), removed."""
        data = bytes(self._buffer)
        self._buffer.clear()
        self._maybe_resume_transport()
        return data


class _OversizedBlockError(Exception):
    def __init__(self, kept: bytes, size: int) -> None:
        super().__init__(f"block of {size} bytes")
        self.kept = kept
        self.size = size


class MllpListener:
    def __init__(self, intake: Intake, settings: IngestAcuteSettings) -> None:
        self.intake = intake
        self.settings = settings
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.Task[None]] = set()

    @property
    def port(self) -> int | None:
        if self._server is None or not self._server.sockets:
            return None
        return int(self._server.sockets[0].getsockname()[1])

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        limit = self.settings.mllp_max_message_bytes + len(BLOCK_END)

        def protocol() -> HL7StreamProtocol:
            return HL7StreamProtocol(FramingReader(limit=limit), self._connected, loop=loop)

        self._server = await loop.create_server(
            protocol, self.settings.mllp_host, self.settings.mllp_port, reuse_address=True
        )
        log.info("MLLP listener started", extra={"port": self.port})

    async def stop(self) -> None:
        if self._server is None:
            return
        self._server.close()
        for task in list(self._connections):
            task.cancel()
        await asyncio.gather(*self._connections, return_exceptions=True)
        await self._server.wait_closed()
        self._server = None

    async def _connected(self, reader: FramingReader, writer: HL7StreamWriter) -> None:
        task = asyncio.current_task()
        peer = writer.get_extra_info("peername")
        origin = f"mllp {peer[0]}:{peer[1]}" if isinstance(peer, tuple) else "mllp"
        if len(self._connections) >= self.settings.mllp_max_connections or task is None:
            log.warning("MLLP connection refused: too many connections", extra={"peer": origin})
            writer.close()
            return
        self._connections.add(task)
        try:
            await self._serve(reader, writer, Arrival("mllp", origin))
        except (ConnectionError, TimeoutError) as error:
            log.info("MLLP connection lost", extra={"peer": origin, "error": repr(error)})
        finally:
            self._connections.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _serve(
        self, reader: FramingReader, writer: HL7StreamWriter, arrival: Arrival
    ) -> None:
        settings = self.settings
        while True:
            block = await reader.next_block(
                settings.mllp_idle_timeout_seconds, settings.mllp_message_timeout_seconds
            )
            if block.kind == "closed":
                return
            if block.kind == "message":
                if _SECOND_HEADER.search(block.data):
                    problem = Problem(
                        "one message per MLLP block: this block holds several MSH segments",
                        ErrorCode.SEGMENT_SEQUENCE,
                    )
                    answer = await self.intake.refuse(block.data, arrival, problem)
                else:
                    answer = await self.intake.receive(block.data, arrival)
            else:
                answer = await self.intake.refuse(block.data, arrival, _problem(block, settings))
            writer.writeblock(answer.ack)
            await asyncio.wait_for(writer.drain(), WRITE_TIMEOUT)
            if block.kind == "truncated":
                return


def _problem(block: Block, settings: IngestAcuteSettings) -> Problem:
    if block.kind == "oversized":
        return Problem(
            f"message of {block.size} bytes is larger than the limit of "
            f"{settings.mllp_max_message_bytes}; only its first bytes were kept",
            ErrorCode.INTERNAL_ERROR,
        )
    if block.kind == "junk":
        return Problem(
            "bytes outside an MLLP block: a message must start with 0x0B and end with 0x1C 0x0D",
            ErrorCode.SEGMENT_SEQUENCE,
        )
    return Problem(
        "truncated: the message ended (connection closed or stalled) before 0x1C 0x0D",
        ErrorCode.SEGMENT_SEQUENCE,
    )
