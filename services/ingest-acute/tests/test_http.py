"""POST /hl7v2: a feed's push token, MSH-4 that belongs to that feed, ACKs in the response."""

from __future__ import annotations

import re
from typing import Any

import pytest

from joinedup.tokens import feed_token, user_token

ER7 = "x-application/hl7-v2+er7"


def a01(control: str, facility: str = "RCB") -> str:
    return (
        f"MSH|^~\\&|PAS|{facility}|JOINEDUP|JOINEDUP|20240105031500||ADT^A01|{control}|P|2.4\n"
        "PID|1||9434765919^^^NHS^NH||JONES^ALAN||19580212|M\n"
        "PV1|1|E|ED^MAJORS^CUBE3^RCB||||||||||||||||V9\n"
    )


@pytest.fixture
def token(acute: Any, samples: Any) -> str:
    return feed_token(acute.data_dir, samples.feed("rcb-pas"))


async def post(acute: Any, body: bytes | str, token: str) -> Any:
    async with acute.client() as client:
        return await client.post(
            "/hl7v2",
            content=body.encode() if isinstance(body, str) else body,
            headers={"Authorization": f"Bearer {token}", "Content-Type": ER7},
        )


def acks(response: Any) -> list[str]:
    """The ACKs of a response, each starting at its own MSH segment."""
    return [a for a in re.split(r"(?<=\r)(?=MSH\|)", response.text) if a]


async def test_messages_are_acknowledged_in_order(acute: Any, token: str, ack: Any) -> None:
    body = "FHS|^~\\&\rBHS|^~\\&\r" + a01("H1") + a01("H2") + a01("H3") + "BTS|3\rFTS|1\r"
    response = await post(acute, body, token)
    assert response.status_code == 200
    assert response.headers["content-type"] == ER7
    answers = acks(response)
    assert [ack.msa(a)[:2] for a in answers] == [["AA", "H1"], ["AA", "H2"], ["AA", "H3"]]
    await acute.idle()
    assert len(acute.resources("Encounter")) == 3
    assert acute.topic("fhir.Encounter")[0].headers["source"] == "rcb-pas"


async def test_a_message_from_another_facility_is_rejected(
    acute: Any, token: str, ack: Any
) -> None:
    response = await post(acute, a01("H4", facility="GHHSFacility") + a01("H5"), token)
    first, second = acks(response)
    assert ack.code(first) == "AR"
    assert "is not the sending facility of feed 'rcb-pas'" in first
    assert ack.code(second) == "AA"
    await acute.idle()
    (dead,) = acute.dead
    assert dead.headers["source"] == "rcb-pas"
    assert dead.headers["origin"] == "POST /hl7v2"


async def test_a_body_that_is_not_hl7_is_answered_with_a_reject(
    acute: Any, token: str, ack: Any
) -> None:
    response = await post(acute, b"\x00\x01\x02 nonsense", token)
    (answer,) = acks(response)
    assert ack.msa(answer)[:2] == ["AR", ""]
    await acute.idle()
    assert [m.value for m in acute.dead] == [b"\x00\x01\x02 nonsense"]


async def test_an_empty_body_is_a_bad_request(acute: Any, token: str) -> None:
    response = await post(acute, b"  \r\n", token)
    assert response.status_code == 400
    assert response.json()["resourceType"] == "OperationOutcome"


async def test_a_body_over_the_limit_is_refused(run_acute: Any, samples: Any) -> None:
    async with run_acute(hl7v2_http_max_body_bytes=1000) as acute:
        token = feed_token(acute.data_dir, samples.feed("rcb-pas"))
        response = await post(acute, a01("BIG") * 10, token)
        assert response.status_code == 413
        assert response.json()["issue"][0]["code"] == "too-costly"


async def test_only_an_hl7v2_feed_token_may_push(acute: Any, samples: Any) -> None:
    assert (await post(acute, a01("T1"), "not-a-jwt")).status_code == 401
    reader = user_token(acute.data_dir)
    assert (await post(acute, a01("T2"), reader)).status_code == 403
    fhir_feed = feed_token(acute.data_dir, samples.feed("gp-fhir"))
    refused = await post(acute, a01("T3"), fhir_feed)
    assert refused.status_code == 403
    assert "takes hl7v2" in refused.json()["issue"][0]["diagnostics"]
    await acute.idle()
    assert acute.published == []
