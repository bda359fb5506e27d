"""Run-time validation: every message with HL7V2_VALIDATE, else a share chosen by digest."""

from __future__ import annotations

from types import SimpleNamespace

from ingest_acute import er7
from ingest_acute.intake import Intake


def decoded(n: int) -> er7.Decoded:
    return er7.decode(f"MSH|^~\\&|PAS|RCB|||20100101||ADT^A01|X{n}|P|2.4\rPID|1\r".encode())


def validates(n: int, validate: bool, share: float) -> bool:
    intake = SimpleNamespace(
        settings=SimpleNamespace(hl7v2_validate=validate, hl7v2_validate_share=share)
    )
    return Intake._validates(intake, decoded(n))  # type: ignore[arg-type]


def test_all_when_asked_none_when_share_is_zero() -> None:
    assert all(validates(n, True, 0.0) for n in range(50))
    assert not any(validates(n, False, 0.0) for n in range(50))
    assert all(validates(n, False, 1.0) for n in range(50))


def test_a_share_chosen_by_content_the_same_for_a_resend() -> None:
    chosen = [validates(n, False, 0.25) for n in range(400)]
    assert 50 < sum(chosen) < 150
    assert chosen == [validates(n, False, 0.25) for n in range(400)]
