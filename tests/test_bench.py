"""The benchmark command runs end to end at quick sizes and writes its JSON report."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest
from typer.testing import CliRunner

from joinedup.bench.cli import app
from joinedup.bench.registry import REGISTRY, percentile
from joinedup.bench.services import _median_run

QUICK = ["bus.inprocess.throughput", "skeleton.embedded.ingest"]


def test_quick_run_writes_positive_results(tmp_path: Path) -> None:
    out = tmp_path / "results" / "bench.json"
    args = ["--quick", "--out", str(out)]
    for name in QUICK:
        args += ["--only", name]

    outcome = CliRunner().invoke(app, args)

    assert outcome.exit_code == 0, outcome.output
    report = orjson.loads(out.read_bytes())
    assert report["machine"]["cores"] >= 1
    assert report["machine"]["python"]
    assert report["machine"]["platform"]
    assert report["started_at"]
    assert report["failed"] == []
    assert report["skipped"] == []
    results = {r["name"]: r for r in report["results"]}
    assert set(QUICK) <= set(results)
    for name in QUICK:
        result = results[name]
        assert result["value"] > 0, result
        assert result["seconds"] > 0, result
        assert result["unit"], result
        assert result["params"], result
        assert result["params"]["cpu_probe_ms"] > 0, result  # the machine's speed at the time
    embedded = results["skeleton.embedded.ingest"]["params"]
    assert embedded["resources_in_record"] >= embedded["resources"] > 0
    assert "skeleton.embedded.ingest" in outcome.output


def test_cpu_ceilings_report_each_stage(tmp_path: Path) -> None:
    """The one-core figures the speed goals are set against (docs/ingest-acute.md and
    docs/ingest-gp.md): every stage measured, and the rates consistent with the stages."""
    out = tmp_path / "bench.json"
    args = [
        "--quick",
        "--out",
        str(out),
        "--only",
        "ingest_acute.mapping",
        "--only",
        "ingest_gp.cpu",
    ]

    outcome = CliRunner().invoke(app, args)

    assert outcome.exit_code == 0, outcome.output
    results = {r["name"]: r for r in orjson.loads(out.read_bytes())["results"]}
    acute = results["ingest_acute.mapping"]["params"]["microseconds_per_message"]
    assert acute["decode+parse"] > 0
    assert acute["map"] > 0
    parse_alone = results["ingest_acute.mapping.parse_alone"]["value"]
    assert parse_alone == pytest.approx(1e6 / acute["decode+parse"], rel=0.01)
    assert results["ingest_acute.mapping"]["value"] < parse_alone
    gp = results["ingest_gp.cpu.whole_line"]["params"]["microseconds_per_resource"]
    assert set(gp) == {"parse", "fast_check", "full_validation", "whole_line"}
    assert all(value > 0 for value in gp.values()), gp
    # an $import line is parsed and checked, and more: it costs more than those two
    assert gp["whole_line"] > gp["parse"] + gp["fast_check"]
    assert results["ingest_gp.cpu.fast_check"]["value"] == gp["fast_check"]


def test_unknown_benchmark_is_refused(tmp_path: Path) -> None:
    outcome = CliRunner().invoke(app, ["--only", "no.such.bench", "--out", str(tmp_path / "x")])
    assert outcome.exit_code == 2
    assert not (tmp_path / "x").exists()


def test_registry_and_percentiles() -> None:
    assert {"bus.inprocess.throughput", "bus.kafka.throughput"} <= set(REGISTRY)
    assert {"skeleton.embedded.ingest", "skeleton.distributed.ingest"} <= set(REGISTRY)
    sample = [float(n) for n in range(1, 101)]
    assert percentile(sample, 0.5) == 50.0
    assert percentile(sample, 0.99) == 99.0
    assert percentile([3.0], 0.99) == 3.0


def test_the_median_run_is_reported_with_every_run_in_its_params() -> None:
    runs = [
        {"name": "record.kafka_to_committed", "value": v, "unit": "resources/s", "params": {"n": v}}
        for v in (9_500.4, 12_700.0, 11_000.0)
    ]
    median = _median_run(runs, ".two_processes")
    assert median["name"] == "record.kafka_to_committed.two_processes"
    assert median["value"] == 11_000.0
    assert median["params"] == {"n": 11_000.0, "runs": [9_500, 12_700, 11_000]}
    single = _median_run(runs[:1], "")
    assert single["name"] == "record.kafka_to_committed"
    assert single["params"] == {"n": 9_500.4}  # one run: nothing to list
