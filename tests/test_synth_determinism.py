"""The same seed gives the same world byte for byte, however the work is split."""

from __future__ import annotations

import hashlib
from pathlib import Path

import orjson
import pytest

from joinedup.synth.generate import generate

PATIENTS = 11_500  # two practices, so that two workers really split the work


def _digest(folder: Path) -> dict[str, str]:
    digests = {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        data = path.read_bytes()
        if path.name == "manifest.json":
            manifest = orjson.loads(data)
            manifest.pop("timing")
            data = orjson.dumps(manifest, option=orjson.OPT_SORT_KEYS)
        digests[str(path.relative_to(folder))] = hashlib.sha256(data).hexdigest()
    return digests


@pytest.fixture(scope="module")
def in_one_process(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    out = tmp_path_factory.mktemp("one")
    generate(out, patients=PATIENTS, seed=99, years=1.0, workers=1)
    return _digest(out)


def test_two_workers_write_the_same_bytes(in_one_process: dict[str, str], tmp_path: Path) -> None:
    manifest = generate(tmp_path, patients=PATIENTS, seed=99, years=1.0, workers=2)
    assert manifest["practices"] == 2
    assert _digest(tmp_path) == in_one_process


def test_another_seed_writes_another_world(in_one_process: dict[str, str], tmp_path: Path) -> None:
    generate(tmp_path, patients=PATIENTS, seed=100, years=1.0, workers=1)
    other = _digest(tmp_path)
    assert other["truth/patients.csv"] != in_one_process["truth/patients.csv"]


def test_generating_again_gives_the_same_bytes(tmp_path: Path) -> None:
    small = tmp_path / "small"
    generate(small, patients=3_000, seed=5, years=0.5, workers=1)
    again = tmp_path / "again"
    generate(again, patients=3_000, seed=5, years=0.5, workers=1)
    assert _digest(small) == _digest(again)
