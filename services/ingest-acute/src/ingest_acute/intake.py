"""One HL7 v2 message in, one ACK out: the path every message takes, from MLLP or HTTP.

1. read the bytes (character set, segment ends) and parse the mapped segments;
2. find the feed: MSH-4 must be a registered hl7v2 feed's sender (over HTTP, the sender of
   the feed whose token pushed it); otherwise AR;
3. in one database round trip, look up whether this message (same sender, MSH-10 and
   content) was seen before, which is then answered as it was and not processed again, and
   what earlier messages established (merges, keys, encounters);
4. map it to FHIR;
5. validate every resource; publish them all in one atomic ``publish``, under the patient's
   key, so one patient's events reach Kafka whole and in order;
6. remember the message, the keys, merges and encounter state; answer AA.

Anything refused gets AE/AR with the reason, and its bytes go to the dead-letter topic,
except a failure of ours that a resend cures (bus or database away): that is AR, and the
sender's resend is the copy that counts. Nothing is dropped without an answer and a trace.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from zoneinfo import ZoneInfo

import hl7
from prometheus_client import Counter, Histogram

from fhir_common.events import Message, event_headers, fhir_message
from fhir_common.feeds import Feed
from fhir_common.observability import current_traceparent, new_traceparent
from fhir_common.service import ServiceContext
from fhir_common.validation import validate_resource
from ingest_acute import er7, mapping, parsing
from ingest_acute.ack import acknowledge
from ingest_acute.inflight import KeyedLock
from ingest_acute.outcome import AckCode, ErrorCode, Problem, Rejected
from ingest_acute.settings import IngestAcuteSettings
from ingest_acute.store import Outcome, Receipt, Store

log = logging.getLogger(__name__)

MESSAGES = Counter(
    "joinedup_hl7v2_messages_total", "HL7 v2 messages answered", ["transport", "ack"]
)
ACK_SECONDS = Histogram(
    "joinedup_hl7v2_ack_seconds",
    "Time from a message's arrival to its ACK",
    ["transport"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
)


@dataclass(frozen=True)
class Arrival:
    """How a message reached us."""

    transport: str  # "mllp" or "http"
    origin: str  # for the dead-letter topic: "mllp 10.1.2.3:50122", "POST /hl7v2"
    feed: Feed | None = None  # over HTTP: the feed the push token speaks for


@dataclass
class Received:
    """A message as far as it has been read: the bytes and how they came, then (as each step
    succeeds) decoded, parsed and its feed found. A refusal or failure answers with what is
    known by then."""

    raw: bytes
    arrival: Arrival
    decoded: er7.Decoded | None = None
    message: parsing.V2Message | None = None
    feed: Feed | None = None


@dataclass(frozen=True)
class Answer:
    ack: bytes
    code: AckCode
    duplicate: bool = False


class Intake:
    def __init__(self, ctx: ServiceContext, settings: IngestAcuteSettings, store: Store) -> None:
        self.ctx = ctx
        self.settings = settings
        self.store = store
        self.zone = ZoneInfo(settings.hl7v2_local_timezone)
        self.placeholders = frozenset(settings.hl7v2_placeholder_nhs_numbers)
        self._in_hand = KeyedLock()  # (feed, MSH-10) of the messages being processed

    async def receive(self, raw: bytes, arrival: Arrival) -> Answer:
        started = time.perf_counter()
        token = current_traceparent.set(current_traceparent.get() or new_traceparent())
        try:
            answer = await self._receive(raw, arrival)
        finally:
            current_traceparent.reset(token)
        MESSAGES.labels(arrival.transport, str(answer.code)).inc()
        ACK_SECONDS.labels(arrival.transport).observe(time.perf_counter() - started)
        return answer

    async def refuse(self, raw: bytes, arrival: Arrival, problem: Problem) -> Answer:
        """Refuse bytes the transport could not even frame (oversized, truncated, junk)."""
        MESSAGES.labels(arrival.transport, str(AckCode.REJECT)).inc()
        await self._dead_letter(Received(raw, arrival), problem)
        return Answer(acknowledge(None, AckCode.REJECT, problem).encode(), AckCode.REJECT)

    async def _receive(self, raw: bytes, arrival: Arrival) -> Answer:
        received = Received(raw, arrival)
        try:
            received.decoded = decoded = er7.decode(raw)
            received.message = message = parsing.parse(decoded)
            received.feed = feed = self._feed_for(message.header, arrival)
        except Rejected as rejected:
            return await self._rejected(received, rejected)
        except Exception as error:
            return await self._failed(received, error)
        # Copies of one message in hand at once are taken one after the other (inflight.py).
        async with self._in_hand.hold((feed.id, message.header.control_id)):
            try:
                return await self._process(decoded, message, feed)
            except Rejected as rejected:
                if not rejected.transient:
                    # refused before we looked: was it refused (or taken) the same way before?
                    earlier = await self._earlier_or_none(feed, message)
                    if earlier is not None:
                        return self._repeat(message, earlier)
                return await self._rejected(received, rejected)
            except Exception as error:
                return await self._failed(received, error)

    async def _failed(self, received: Received, error: Exception) -> Answer:
        """A bug of ours: keep the message, let the sender retry."""
        origin = received.arrival.origin
        log.exception("HL7 v2 message could not be processed", extra={"origin": origin})
        problem = Problem(f"internal error: {error!r}"[:500], ErrorCode.INTERNAL_ERROR)
        await self._dead_letter(received, problem)
        return self._answer(received, AckCode.REJECT, problem)

    def _validates(self, decoded: er7.Decoded) -> bool:
        """Whether this message's resources are validated before publishing: all of them with
        ``hl7v2_validate``, else a share chosen by content digest (a resend is treated alike)."""
        if self.settings.hl7v2_validate:
            return True
        share = self.settings.hl7v2_validate_share
        return share > 0 and int(decoded.digest[:8], 16) < share * 0x1_0000_0000

    def _feed_for(self, header: parsing.Header, arrival: Arrival) -> Feed:
        names = header.sending_facility
        shown = names[0] if names else ""
        if arrival.feed is not None:
            if arrival.feed.sender and arrival.feed.sender in names:
                return arrival.feed
            raise Rejected.reject(
                f"MSH-4 {shown!r} is not the sending facility of feed {arrival.feed.id!r} "
                f"({arrival.feed.sender or 'none registered'})",
                ErrorCode.UNKNOWN_KEY,
                "MSH",
                4,
            )
        for name in names:
            feed = self.ctx.feeds.by_sender(name)
            if feed is not None:
                return feed
        raise Rejected.reject(
            f"unknown sending facility MSH-4 {shown!r}: no hl7v2 feed is registered for it",
            ErrorCode.UNKNOWN_KEY,
            "MSH",
            4,
        )

    async def _earlier_or_none(self, feed: Feed, message: parsing.V2Message) -> Receipt | None:
        try:
            receipt = await self.store.receipt(feed.id, message.header.control_id)
        except Exception:
            return None  # the refusal stands either way
        return self._same(receipt, feed, message)

    def _same(
        self, receipt: Receipt | None, feed: Feed, message: parsing.V2Message
    ) -> Receipt | None:
        """``receipt`` if it is of this very message (same content), else None."""
        control_id = message.header.control_id
        if receipt is None:
            return None
        if receipt.digest != message.decoded.digest:
            log.warning(
                "control id reused with different content; taken as a new message",
                extra={"feed": feed.id, "control_id": control_id},
            )
            return None
        return receipt

    def _repeat(self, message: parsing.V2Message, receipt: Receipt) -> Answer:
        code = AckCode(receipt.ack_code)
        ack = acknowledge(message_source(message), code, receipt.problem)
        return Answer(_encoded(ack, message.decoded), code, duplicate=True)

    async def _process(
        self, decoded: er7.Decoded, message: parsing.V2Message, feed: Feed
    ) -> Answer:
        plan = mapping.plan(message, feed, self.zone, self.placeholders)
        control_id = message.header.control_id
        try:
            receipt, known = await self.store.before(
                feed.id, control_id, mapping.first_lookup(plan)
            )
            earlier = self._same(receipt, feed, message)
            if earlier is not None:
                return self._repeat(message, earlier)
            known.add(await self.store.known(mapping.second_lookup(plan, known)))
        except Exception as error:
            raise _unavailable("database", error) from error
        mapped = mapping.build(plan, known)
        if self._validates(decoded):
            _validate(mapped)
        headers_for = _headers(feed, mapped.occurred_at)
        publication = [fhir_message(r, key, headers_for()) for key, r in mapped.resources]
        await self._publish(publication)
        warnings = [*decoded.warnings, *mapped.warnings]
        receipt = Receipt(feed.id, message.header.control_id, decoded.digest, str(AckCode.ACCEPT))
        outcome = Outcome(receipt, mapped.keys, mapped.merges, mapped.encounters)
        try:
            await self.store.remember(outcome)
        except Exception:
            # Published already: the data is safe. A resend will be published again (harmless).
            log.exception("could not remember an accepted message", extra={"feed": feed.id})
        ack = acknowledge(message_source(message), AckCode.ACCEPT, None, warnings)
        return Answer(_encoded(ack, decoded), AckCode.ACCEPT)

    async def _publish(self, publication: list[Message]) -> None:
        try:
            await self.ctx.bus.publish(publication)
        except Exception as error:
            raise _unavailable("bus", error) from error

    async def _rejected(self, received: Received, rejected: Rejected) -> Answer:
        problem = rejected.problem
        decoded, message, feed = received.decoded, received.message, received.feed
        if rejected.transient:
            log.warning("HL7 v2 message not taken now", extra={"reason": str(problem)})
        else:
            log.info("HL7 v2 message refused", extra={"reason": str(problem), "ack": rejected.ack})
            await self._dead_letter(received, problem)
            if feed is not None and message is not None and decoded is not None:
                receipt = Receipt(
                    feed.id, message.header.control_id, decoded.digest, str(rejected.ack), problem
                )
                try:
                    await self.store.remember(Outcome(receipt))
                except Exception:
                    log.exception("could not remember a refused message", extra={"feed": feed.id})
        return self._answer(received, rejected.ack, problem)

    def _answer(self, received: Received, code: AckCode, problem: Problem) -> Answer:
        decoded, message = received.decoded, received.message
        source = message_source(message) if message else _salvaged_header(decoded)
        return Answer(_encoded(acknowledge(source, code, problem), decoded), code)

    async def _dead_letter(self, received: Received, problem: Problem) -> None:
        raw, arrival, feed, message = (
            received.raw,
            received.arrival,
            received.feed,
            received.message,
        )
        names = message.header.sending_facility if message else ()
        source = (
            feed.id if feed else (arrival.feed.id if arrival.feed else (names or ("unknown",))[0])
        )
        try:
            await self.ctx.bus.dead_letter(
                value=raw,
                source=source,
                error=str(problem),
                service=self.ctx.name,
                origin=arrival.origin,
            )
        except Exception:
            # The sender has the NAK with the reason; this log line is the rest of the trace.
            log.exception(
                "could not dead-letter a refused message",
                extra={"bytes": len(raw), "reason": str(problem), "origin": arrival.origin},
            )


def message_source(message: parsing.V2Message) -> hl7.Message:
    """The parsed message an ACK is built from."""
    return message.parsed


def _salvaged_header(decoded: er7.Decoded | None) -> hl7.Message | None:
    """The MSH of a message refused before it was parsed, if it can be read on its own."""
    if decoded is None:
        return None
    first = decoded.text.split("\r", 1)[0]
    try:
        return hl7.parse(first) if first.startswith("MSH") and len(first) > 8 else None
    except Exception:
        return None


def _encoded(ack: str, decoded: er7.Decoded | None) -> bytes:
    """The ACK in the character set the sender used (ASCII in practice)."""
    return ack.encode(decoded.codec if decoded else "utf-8", "replace")


def _headers(feed: Feed, occurred_at: str | None) -> Callable[[], dict[str, str]]:
    """Headers for each message of one publication: the same trace, each its own event-id."""
    traceparent = current_traceparent.get()

    def make() -> dict[str, str]:
        return event_headers(
            source=feed.id, setting=feed.setting, occurred_at=occurred_at, traceparent=traceparent
        )

    return make


def _validate(mapped: mapping.Mapped) -> None:
    problems = []
    for _, resource in mapped.resources:
        for issue in validate_resource(resource):
            problems.append(issue.diagnostics)
    if problems:
        raise Rejected.error(
            "the message maps to invalid FHIR: " + "; ".join(problems[:5]), ErrorCode.DATA_TYPE
        )


def _unavailable(what: str, error: Exception) -> Rejected:
    problem = Problem(
        f"not taken now ({what} unavailable: {type(error).__name__}); please send again",
        ErrorCode.INTERNAL_ERROR,
    )
    return Rejected(AckCode.REJECT, problem, transient=True)
