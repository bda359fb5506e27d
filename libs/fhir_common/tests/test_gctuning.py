"""The collector is tuned for throughput once start-up is over, never made busier."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from fhir_common import gctuning


@pytest.fixture
def restored() -> Iterator[None]:
    before = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*before)


def test_tune_freezes_what_is_alive_and_collects_less_often(restored: None) -> None:
    gc.set_threshold(700, 10, 10)
    alive = [object() for _ in range(10)]
    gctuning.tune()
    assert gc.get_freeze_count() > 0
    assert gc.get_threshold() == (gctuning.YOUNG, *gctuning.OLDER)
    assert alive


def test_tune_never_lowers_a_threshold(restored: None) -> None:
    gc.set_threshold(200_000, 50, 500)
    gctuning.tune(young=1_000)
    assert gc.get_threshold() == (200_000, 50, 500)
