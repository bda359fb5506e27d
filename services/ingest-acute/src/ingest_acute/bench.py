"""Benchmarks of ingest-acute (issue 4, point 8): ADT messages per second from MLLP to the bus,
and the ACK latency each sender sees.

* ``mllp_to_kafka``: ingest-acute in distributed mode (KafkaBus, PostgreSQL in a throw-away
  database) in a process of its own; an ACK means the message's resources are committed on
  Kafka and its receipt is recorded.
* ``mllp_in_process``: the same in embedded mode (in-process bus, SQLite).
* ``mapping_throughput``: the CPU work alone (decode, parse, map, validate) on one core, in a
  process of its own with the collector tuned as the service's is; it bounds the two above.
  Also the parse alone (python-hl7), which bounds any process that uses it.

The load generator runs in this process and the service in another, as in production: the
service's process is what is measured. ``connections`` senders each send their patients'
messages one at a time, waiting for each ACK (as MLLP senders do); each patient's admission
and discharge go over the same connection, in order. The MLLP benchmarks then measure the ACK
times again at a fixed rate below saturation (``….paced``), where they are the service's own
rather than the queue's. Each function returns a list of dicts ``{"name", "value", "unit",
"params"}``, the first being the throughput.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import os
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from fhir_common.feeds import Feed, FeedKind, FeedRegistry
from fhir_common.identifiers import nhs_check_digit
from fhir_common.scratch import scratch_database
from fhir_common.validation import validate_resource

VT, FS, CR = b"\x0b", b"\x1c", b"\r"
SENDER = "BENCHPAS"
ODS = "RBE01"
READY_LIMIT = 120.0  # seconds the service may take to start
WARMUP_PATIENTS = 20
# ACK latency is also measured below saturation: this many patients' messages at this rate
# (messages/s over all connections), well under what the service takes on this machine.
PACED_PATIENTS = 300
PACED_RATE = 60.0

# An admission and a discharge as an English PAS sends them (NHS England ITK v2.4 shape).
ADMISSION = (
    "MSH|^~\\&|PAS|{sender}|JOINEDUP|JOINEDUP|{at}||ADT^A01^ADT_A01|{control}A|P|2.4|1||||GBR|UNICODE|EN\r"
    "EVN|A01|{at}|||C3456789^Darwin^Samuel^^^Dr|{at}\r"
    "PID|1||{nhs}^^^NHS^NH~{mrn}^^^{sender}^MR||SMITH^FREDRICA^J^^MRS^^L||19651213|2|||"
    "29 WEST AVENUE^BURYTHORPE^MALTON^NORTH YORKSHIRE^YO32 5TT^GBR^H||+441234567890||EN|M|C22\r"
    "PD1|||MALTON GP PRACTICE^^Y06601|G5612908^Townley^Gregory^^^Dr^^^GMC\r"
    "PV1|1|E|AE^MAJORS^CUBE3^{sender}|21|||C3456789^Darwin^Samuel^^^Dr^^^GMC|"
    "G5612908^Townley^Gregory^^^Dr^^^GMC||300||||19||||{visit}^^^VISITID"
    "|||||||||||||||||||||||||{at}\r"
    "PV2|||E16.2^Hypoglycaemia^I10\r"
    "AL1|1|DA|Z88.5|SV|rash|199807011755\r"
    "DG1|1||E11.6^Type 2 diabetes mellitus with other complications^I10||{at}|A\r"
    "ZU1|{at}|1|C\r"
)
DISCHARGE = (
    "MSH|^~\\&|PAS|{sender}|JOINEDUP|JOINEDUP|{at}||ADT^A03^ADT_A03|{control}D|P|2.4|1||||GBR|UNICODE|EN\r"
    "EVN|A03|{at}|||C3456789^Darwin^Samuel^^^Dr|{at}\r"
    "PID|1||{nhs}^^^NHS^NH~{mrn}^^^{sender}^MR||SMITH^FREDRICA^J^^MRS^^L||19651213|2\r"
    "PV1|1|E|AE^MAJORS^CUBE3^{sender}|21|||C3456789^Darwin^Samuel^^^Dr^^^GMC|"
    "||300||||19||||{visit}^^^VISITID|||||||||||||||||1|19||||||||20240105031500|{at}\r"
    "DG1|1||E16.2^Hypoglycaemia^I10||{at}|F\r"
)


def nhs_numbers(count: int, seed: int) -> list[str]:
    """Valid NHS numbers in the 999 range (test data), different for each ``seed``."""
    found: list[str] = []
    candidate = (seed * 7919) % 900_000
    while len(found) < count:
        first_nine = f"999{candidate % 1_000_000:06d}"
        check = nhs_check_digit(first_nine)
        if check is not None:
            found.append(f"{first_nine}{check}")
        candidate += 1
    return found


def patient_messages(patients: int, run: str) -> list[list[bytes]]:
    """For each patient, an admission then a discharge (framed for MLLP)."""
    every = []
    for n, nhs in enumerate(nhs_numbers(patients, seed=hash(run) % 1000)):
        values = {
            "sender": SENDER,
            "at": "20240105031500",
            "control": f"{run}-{n}",
            "nhs": nhs,
            "mrn": f"M{run}{n}",
            "visit": f"V{run}{n}",
        }
        every.append([VT + t.format(**values).encode() + FS + CR for t in (ADMISSION, DISCHARGE)])
    return every


# ----------------------------------------------------------------------------- the service


def _serve(settings: dict[str, Any], in_process_bus: bool, pipe: Connection) -> None:
    """The service's process: start ingest-acute, say its MLLP port, run until told to stop."""
    # On the event loop `joinedup serve` gives it (uvicorn's choice: uvloop where installed),
    # not asyncio's default: the service is measured as it runs.
    from uvicorn.loops.auto import auto_loop_factory

    with asyncio.Runner(loop_factory=auto_loop_factory()) as runner:
        runner.run(_serve_until_stopped(settings, in_process_bus, pipe))


async def _serve_until_stopped(
    settings: dict[str, Any], in_process_bus: bool, pipe: Connection
) -> None:
    from fhir_common.bus import InProcessBus
    from fhir_common.observability import configure_logging
    from ingest_acute.main import create_app
    from ingest_acute.settings import IngestAcuteSettings

    service_settings = IngestAcuteSettings(**settings)
    configure_logging(service_settings.log_level, service_settings.log_json)
    bus = InProcessBus() if in_process_bus else None
    app = create_app(service_settings, bus)
    async with app.router.lifespan_context(app):
        if bus is not None:
            await bus.start()
        pipe.send(app.state.acute.mllp_port)
        await asyncio.get_running_loop().run_in_executor(None, pipe.recv)
        if bus is not None:
            await bus.stop()


@contextlib.asynccontextmanager
async def _service(settings: dict[str, Any], in_process_bus: bool) -> AsyncIterator[int]:
    context = multiprocessing.get_context("spawn")
    ours, theirs = context.Pipe()
    process = context.Process(target=_serve, args=(settings, in_process_bus, theirs), daemon=True)
    process.start()
    loop = asyncio.get_running_loop()
    try:
        deadline = time.monotonic() + READY_LIMIT
        while not ours.poll():
            if not process.is_alive():
                raise RuntimeError(
                    f"ingest-acute exited with {process.exitcode} before it was ready"
                )
            if time.monotonic() > deadline:
                raise RuntimeError(f"ingest-acute not ready within {READY_LIMIT} s")
            await asyncio.sleep(0.1)
        yield int(ours.recv())
    finally:
        with contextlib.suppress(OSError):
            ours.send("stop")
        await loop.run_in_executor(None, process.join, 30)
        if process.is_alive():
            process.kill()


def _settings(data_dir: Path, **extra: Any) -> dict[str, Any]:
    feeds = data_dir / "feeds.json"
    FeedRegistry(feeds).add(
        Feed(id="bench-pas", kind=FeedKind.HL7V2, ods=ODS, setting="acute", sender=SENDER)
    )
    return {
        "data_dir": data_dir,
        "feeds_file": feeds,
        "mllp_host": "127.0.0.1",
        "mllp_port": 0,
        "log_level": "WARNING",
        **extra,
    }


@contextlib.asynccontextmanager
async def _fresh_database(database_url: str) -> AsyncIterator[str]:
    """A database of its own on the PostgreSQL server, dropped afterwards."""

    async with scratch_database(database_url, "jd_bench_acute") as url:
        yield url


# ----------------------------------------------------------------------------- the senders


@dataclass
class Sent:
    seconds: float
    latencies: list[float]
    codes: dict[str, int]


async def _drive(
    port: int, patients: list[list[bytes]], connections: int, rate: float | None = None
) -> Sent:
    """Each connection sends its share one message at a time, waiting for each ACK; with
    ``rate`` (messages/s over all connections) a connection also waits for its next slot, so
    the ACK times are those of a service below saturation rather than of a queue."""
    shares = [patients[n::connections] for n in range(connections)]
    latencies: list[float] = []
    codes: dict[str, int] = {}
    interval = connections / rate if rate else 0.0

    async def sender(share: list[list[bytes]], offset: float) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        slot = time.perf_counter() + offset
        try:
            for messages in share:
                for message in messages:
                    if interval:
                        await asyncio.sleep(max(0.0, slot - time.perf_counter()))
                        slot += interval
                    began = time.perf_counter()
                    writer.write(message)
                    ack = await reader.readuntil(FS + CR)
                    latencies.append(time.perf_counter() - began)
                    code = ack.split(b"\rMSA|", 1)[1][:2].decode()
                    codes[code] = codes.get(code, 0) + 1
        finally:
            writer.close()

    started = time.perf_counter()
    # paced senders start spread over one interval, not all at once
    offsets = [interval * n / connections for n in range(connections)]
    await asyncio.gather(*(sender(s, o) for s, o in zip(shares, offsets, strict=True) if s))
    return Sent(time.perf_counter() - started, latencies, codes)


def _percentile(values: Sequence[float], fraction: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(fraction * len(ordered) + 0.5) - 1))
    return ordered[index]


def _results(name: str, sent: Sent, params: dict[str, Any]) -> list[dict[str, Any]]:
    count = len(sent.latencies)
    params = {**params, "messages": count, "acks": sent.codes, "seconds": round(sent.seconds, 2)}
    if sent.codes.get("AA", 0) != count:
        raise RuntimeError(f"{name}: not every message was accepted: {sent.codes}")
    return [
        {
            "name": name,
            "value": round(count / sent.seconds, 1),
            "unit": "messages/s",
            "params": params,
        },
        *_latencies(name, sent, params),
    ]


def _latencies(name: str, sent: Sent, params: dict[str, Any]) -> list[dict[str, Any]]:
    return [
        {
            "name": f"{name}.ack_p{round(fraction * 100)}",
            "value": round(_percentile(sent.latencies, fraction) * 1000, 2),
            "unit": "ms",
            "params": params,
        }
        for fraction in (0.50, 0.99)
    ]


async def _run(
    name: str, settings: dict[str, Any], in_process_bus: bool, patients: int, connections: int
) -> list[dict[str, Any]]:
    run = uuid.uuid4().hex[:6]
    async with _service(settings, in_process_bus) as port:
        await _drive(port, patient_messages(WARMUP_PATIENTS, f"w{run}"), connections)
        sent = await _drive(port, patient_messages(patients, run), connections)
        paced = await _drive(
            port, patient_messages(PACED_PATIENTS, f"p{run}"), connections, PACED_RATE
        )
    params: dict[str, Any] = {
        "patients": patients,
        "connections": connections,
        # what the service validated: every message, or its default sampled share
        "validate": "all" if settings.get("hl7v2_validate") else "sampled",
        "cpus": os.cpu_count(),
    }
    if paced.codes.get("AA", 0) != len(paced.latencies):
        raise RuntimeError(f"{name}: not every paced message was accepted: {paced.codes}")
    paced_params = {**params, "patients": PACED_PATIENTS, "rate": PACED_RATE}
    paced_params |= {"messages": len(paced.latencies), "acks": paced.codes}
    return _results(name, sent, params) + _latencies(f"{name}.paced", paced, paced_params)


# ----------------------------------------------------------------------------- benchmarks


async def mllp_to_kafka(
    *,
    kafka_bootstrap: str | None = None,
    database_url: str | None = None,
    patients: int = 1500,
    connections: int = 32,
    validate: bool = False,
) -> list[dict[str, Any]]:
    """ADT messages/s from MLLP to Kafka (ACK = committed on the broker), ACK p50/p99.

    ``validate`` validates every message; by default the service's own setting applies (a
    sampled share), as in production."""
    from fhir_common.auth import LocalSigner

    bootstrap = kafka_bootstrap or os.environ.get("JOINEDUP_KAFKA_BOOTSTRAP", "")
    database = database_url or os.environ.get("JOINEDUP_DATABASE_URL", "")
    if not bootstrap or not database:
        raise RuntimeError("mllp_to_kafka needs JOINEDUP_KAFKA_BOOTSTRAP and JOINEDUP_DATABASE_URL")
    with tempfile.TemporaryDirectory(prefix="jd-bench-acute-") as directory:
        data_dir = Path(directory)
        key = data_dir / "public.pem"
        key.write_text(LocalSigner.generate().public_key_pem())
        async with _fresh_database(database) as fresh:
            settings = _settings(
                data_dir,
                mode="distributed",
                kafka_bootstrap=bootstrap,
                database_url=fresh,
                auth_public_key_file=key,
                hl7v2_validate=validate,
            )
            return await _run("ingest_acute.mllp_to_kafka", settings, False, patients, connections)


async def mllp_in_process(
    *, patients: int = 1500, connections: int = 32, validate: bool = False
) -> list[dict[str, Any]]:
    """The same in embedded mode: in-process bus and SQLite (``validate`` as above)."""
    with tempfile.TemporaryDirectory(prefix="jd-bench-acute-") as directory:
        data_dir = Path(directory)
        settings = _settings(
            data_dir,
            mode="embedded",
            # embedded mode's own SQLite, whatever JOINEDUP_DATABASE_URL the shell exports
            database_url=f"sqlite+aiosqlite:///{data_dir / 'joinedup.db'}",
            hl7v2_validate=validate,
        )
        return await _run("ingest_acute.mllp_in_process", settings, True, patients, connections)


def _time_mapping(patients: int, validate: bool, rounds: int) -> dict[str, float]:
    """Microseconds of CPU per message for each stage, best of ``rounds``: runs in a process of
    its own, warmed up and with the collector tuned as the service's process is."""
    from fhir_common import gctuning
    from ingest_acute import er7, mapping, parsing

    feed = Feed(id="bench-pas", kind=FeedKind.HL7V2, ods=ODS, setting="acute", sender=SENDER)
    zone = ZoneInfo("Europe/London")
    messages = [m[1:-2] for pair in patient_messages(patients, "map") for m in pair]
    gctuning.tune()
    best = {"decode+parse": float("inf"), "map": float("inf"), "validate": float("inf")}
    clock = time.process_time
    for _ in range(rounds + 1):  # the first round warms up
        # one message at a time, as the service takes them (nothing kept for the collector)
        spent = dict.fromkeys(best, 0.0)
        for message in messages:
            began = clock()
            parsed = parsing.parse(er7.decode(message))
            parsed_at = clock()
            built = mapping.build(mapping.plan(parsed, feed, zone), mapping.Known())
            mapped_at = clock()
            if validate:
                for _, resource in built.resources:
                    validate_resource(resource)
            spent["decode+parse"] += parsed_at - began
            spent["map"] += mapped_at - parsed_at
            spent["validate"] += clock() - mapped_at
        best = {k: min(best[k], spent[k]) for k in best}
    return {k: v / len(messages) * 1e6 for k, v in best.items()}


async def mapping_throughput(
    *, patients: int = 500, validate: bool = True, rounds: int = 3
) -> list[dict[str, Any]]:
    """Messages/s one core decodes, parses, maps (and validates): the ceiling of the above.
    3,000 messages/s per process (issue 4) allows 333 µs of CPU per message for everything."""
    spawn = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(1, mp_context=spawn) as pool:
        timed = await asyncio.get_running_loop().run_in_executor(
            pool, _time_mapping, patients, validate, rounds
        )
    per_message = {k: round(v, 1) for k, v in timed.items()}
    params = {
        "messages": patients * 2,
        "validate": validate,
        "microseconds_per_message": per_message,
        "parser": "python-hl7 (hl7.parse)",
    }
    return [
        {
            "name": "ingest_acute.mapping",
            "value": round(1e6 / sum(timed.values()), 1),
            "unit": "messages/s",
            "params": params,
        },
        {
            "name": "ingest_acute.mapping.parse_alone",
            "value": round(1e6 / timed["decode+parse"], 1),
            "unit": "messages/s",
            "params": params,
        },
    ]
