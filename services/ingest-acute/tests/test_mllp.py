"""MLLP over a real socket, with python-hl7's MLLP client: every sample is acknowledged, bad
input is refused with the reason and kept, and the listener keeps serving everyone else."""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import orjson
from hl7.mllp import open_hl7_connection

from fhir_common.events import Header

VT, FS, CR = b"\x0b", b"\x1c", b"\r"

A01 = (
    "MSH|^~\\&|PAS|RCB|JOINEDUP|JOINEDUP|20240105031500||ADT^A01^ADT_A01|{control}|P|2.5\r"
    "EVN|A01|20240105031500\r"
    "PID|1||{nhs}^^^NHS^NH~{mrn}^^^RCB^MR||JONES^ALAN||19580212|M\r"
    "PV1|1|E|ED^MAJORS^CUBE3^RCB||||C1234567^WHO^JANE^^^DR^^^GMC||||||||||||{visit}\r"
)


def a01(control: str, mrn: str = "R100", nhs: str = "9434765919", visit: str = "V1") -> bytes:
    return A01.format(control=control, mrn=mrn, nhs=nhs, visit=visit).encode()


async def raw_exchange(port: int, data: bytes, *, read: bool = True) -> bytes:
    """Send bytes as they are (no client framing), and read one framed answer."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        await writer.drain()
        if not read:
            return b""
        async with asyncio.timeout(10):
            answer = await reader.readuntil(FS + CR)
        return answer.removeprefix(VT).removesuffix(FS + CR)
    finally:
        writer.close()


async def test_every_sample_is_acknowledged(acute: Any, samples: Any, ack: Any) -> None:
    every = samples.nhs_adt() + samples.converter()
    acks = await acute.send(*(s.data for s in every))
    for sample, answer in zip(every, acks, strict=True):
        code = ack.code(answer)
        control = ack.msa(answer)[1]
        if "QueryPatient" in sample.name:
            assert code == "AR", sample.name  # queries, not ADT: refused, not guessed
        elif "LAB-ORU" in sample.name:
            assert code == "AR", sample.name  # no MSH-4: nobody to attribute it to
            assert "unknown sending facility" in answer
        else:
            assert code == "AA", (sample.name, answer)
        assert control in sample.data.decode("utf-8", "replace"), sample.name
    # nothing refused went unrecorded: one dead letter per AR
    refused = sum(1 for a in acks if ack.code(a) != "AA")
    assert len(acute.dead) == refused
    assert acute.resources("Encounter")
    assert {m.headers[Header.SETTING] for m in acute.topic("fhir.Encounter")} == {"acute"}


async def test_a_resent_message_is_acknowledged_alike_and_not_processed_twice(
    acute: Any, ack: Any
) -> None:
    first = await acute.send(a01("DUP-1"))
    published = len(acute.published)
    again = await acute.send(a01("DUP-1"), a01("DUP-1"))
    assert [ack.code(a) for a in first + again] == ["AA", "AA", "AA"]
    assert len(acute.published) == published
    # a refused one is refused again, the same way, without a second dead letter
    bad = a01("DUP-2", nhs="9434765918", mrn="")
    refusals = await acute.send(bad, bad)
    assert [ack.code(a) for a in refusals] == ["AE", "AE"]
    assert ack.err(refusals[0]) == ack.err(refusals[1])  # the same reason, code and place
    assert "101^Required field missing" in refusals[1]
    assert len(acute.dead) == 1


async def test_one_patient_is_published_whole_and_in_order_under_one_key(acute: Any) -> None:
    controls = [f"ORD-{n}" for n in range(5)]
    await acute.send(*(a01(c, visit=f"V{n}") for n, c in enumerate(controls)))
    encounters = acute.topic("fhir.Encounter")
    assert {m.key for m in encounters} == {"9434765919"}
    visits = [orjson.loads(m.value)["identifier"][0]["value"] for m in encounters]
    assert visits == [f"V{n}" for n in range(5)]
    # each message's resources share one trace: they were one publish
    patients = acute.topic("fhir.Patient")
    assert [p.headers[Header.TRACEPARENT] for p in patients] == [
        e.headers[Header.TRACEPARENT] for e in encounters
    ]


async def test_concurrent_connections_each_get_their_own_acks_in_order(
    acute: Any, ack: Any
) -> None:
    async def one_sender(n: int) -> list[str]:
        reader, writer = await open_hl7_connection("127.0.0.1", acute.port)
        controls = []
        try:
            for m in range(10):
                writer.writeblock(a01(f"C{n}-{m}", mrn=f"M{n}", nhs="", visit=f"V{n}-{m}"))
                await writer.drain()
                answer = (await reader.readblock()).decode()
                controls.append(ack.msa(answer)[1])
        finally:
            writer.close()
        return controls

    results = await asyncio.gather(*(one_sender(n) for n in range(20)))
    for n, controls in enumerate(results):
        assert controls == [f"C{n}-{m}" for m in range(10)]
    await acute.idle()
    assert len(acute.topic("fhir.Encounter")) == 200


async def test_unknown_sender_is_rejected_and_kept(acute: Any, ack: Any) -> None:
    (answer,) = await acute.send(a01("U1").replace(b"|PAS|RCB|", b"|PAS|NOWHERE|"))
    assert ack.code(answer) == "AR"
    assert "unknown sending facility MSH-4 'NOWHERE'" in answer
    assert "204^Unknown key identifier^HL70357" in answer
    (dead,) = acute.dead
    assert dead.value == a01("U1").replace(b"|PAS|RCB|", b"|PAS|NOWHERE|")
    assert dead.headers[Header.SOURCE] == "NOWHERE"
    assert dead.headers[Header.SERVICE] == "ingest-acute"
    assert dead.headers[Header.ORIGIN].startswith("mllp 127.0.0.1:")


async def test_garbled_and_binary_input_is_refused_and_the_connection_goes_on(
    acute: Any, ack: Any
) -> None:
    garbled = b"MSH|this is not|hl7 at all\x01\x02"
    binary = bytes(range(256)) * 4
    answers = await acute.send(garbled, binary, a01("AFTER-JUNK"))
    assert [ack.code(a) for a in answers] == ["AR", "AR", "AA"]
    assert "binary content" in answers[1] or "must begin with an MSH" in answers[1]
    assert [m.value for m in acute.dead] == [garbled, binary]


async def test_bytes_outside_a_block_are_refused_and_kept(acute: Any, ack: Any) -> None:
    junk = b"MSH|^~\\&|no framing at all" + FS + CR
    answer = (await raw_exchange(acute.port, junk)).decode()
    assert ack.code(answer) == "AR"
    assert "outside an MLLP block" in answer
    await acute.idle()
    assert [m.value for m in acute.dead] == [junk]


async def test_a_truncated_message_is_kept_and_the_listener_serves_others(
    acute: Any, ack: Any
) -> None:
    cut = a01("CUT-1")[:70]
    await raw_exchange(acute.port, VT + cut, read=False)  # the peer closes mid-message
    (answer,) = await acute.send(a01("AFTER-CUT"))
    assert ack.code(answer) == "AA"
    await acute.idle()
    (dead,) = acute.dead
    assert dead.value == cut
    assert "truncated" in dead.headers[Header.ERROR]


async def test_a_stalled_message_times_out_as_truncated(run_acute: Any, ack: Any) -> None:
    async with run_acute(mllp_message_timeout_seconds=0.3) as acute:
        reader, writer = await asyncio.open_connection("127.0.0.1", acute.port)
        writer.write(VT + a01("STALL")[:50])
        await writer.drain()
        async with asyncio.timeout(5):
            answer = (await reader.readuntil(FS + CR)).decode()
            assert await reader.read() == b""  # and the connection is closed
        writer.close()
        assert ack.code(answer.strip("\x0b\x1c\r")) == "AR"
        await acute.idle()
        assert acute.dead[0].value == a01("STALL")[:50]


async def test_an_oversized_message_is_refused_its_start_kept_and_the_next_one_taken(
    run_acute: Any, ack: Any
) -> None:
    async with run_acute(mllp_max_message_bytes=2000) as acute:
        huge = a01("HUGE") + b"NTE|1||" + b"x" * 100_000 + b"\r"
        answers = await acute.send(huge, a01("NEXT"))
        assert [ack.code(a) for a in answers] == ["AR", "AA"]
        assert "larger than the limit of 2000" in answers[0]
        (dead,) = acute.dead
        assert dead.value == huge[: len(dead.value)]
        assert len(dead.value) >= 2000
        assert str(len(huge)) in dead.headers[Header.ERROR]


async def test_several_messages_in_one_block_are_refused(acute: Any, ack: Any) -> None:
    (answer,) = await acute.send(a01("B1") + a01("B2"))
    assert ack.code(answer) == "AR"
    assert "one message per MLLP block" in answer


async def test_connections_beyond_the_limit_are_closed(run_acute: Any, ack: Any) -> None:
    async with run_acute(mllp_max_connections=2) as acute:
        held = [await asyncio.open_connection("127.0.0.1", acute.port) for _ in range(2)]
        await asyncio.sleep(0.1)
        reader, writer = await asyncio.open_connection("127.0.0.1", acute.port)
        async with asyncio.timeout(5):
            assert await reader.read() == b""
        writer.close()
        for _, w in held:
            w.close()
        await asyncio.sleep(0.1)
        (answer,) = await acute.send(a01("OK-AGAIN"))
        assert ack.code(answer) == "AA"


async def test_port_zero_binds_a_free_port_and_stop_releases_it(run_acute: Any) -> None:
    async with run_acute() as acute:
        port = acute.port
        assert port > 0
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", port))  # free again
