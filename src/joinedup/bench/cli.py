"""``python -m joinedup.bench``: run the registered benchmarks, print a table, write JSON."""

from __future__ import annotations

import asyncio
import fnmatch
import os
import platform
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import orjson
import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table

from joinedup.bench import bus, services, skeleton  # noqa: F401 - importing registers them
from joinedup.bench.registry import REGISTRY, Benchmark, Context, Result, Skip

app = typer.Typer(help="JoinedUp benchmarks.", add_completion=False)

DEFAULT_OUT = Path("bench-results/bench.json")
WIDE_ENOUGH = 140  # columns needed to show the params in the table


def select(patterns: list[str] | None) -> list[Benchmark]:
    """The benchmarks named (exactly or by glob, ``bus.*``) in ``patterns``; all if none."""
    if not patterns:
        return list(REGISTRY.values())
    unknown = [p for p in patterns if not fnmatch.filter(REGISTRY, p)]
    if unknown:
        raise typer.BadParameter(
            f"no benchmark matches {', '.join(unknown)}; there are: {', '.join(REGISTRY)}",
            param_hint="--only",
        )
    return [
        b for name, b in REGISTRY.items() if any(fnmatch.fnmatchcase(name, p) for p in patterns)
    ]


PROBE_DOCUMENT = {
    "resourceType": "Observation",
    "status": "final",
    "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/x", "code": "y"}]}],
    "code": {"coding": [{"system": "http://loinc.org", "code": "8302-2", "display": "Height"}]},
    "subject": {"reference": "Patient/example"},
    "effectiveDateTime": "2020-01-01T00:00:00Z",
    "valueQuantity": {"value": 180.5, "unit": "cm", "system": "http://unitsofmeasure.org"},
}


def cpu_probe_ms() -> float:
    """Milliseconds a fixed piece of work like the platform's takes now (parse and re-serialise
    10,000 small FHIR resources, all kept in memory, as a batch is), quickest of three tries.

    Shared virtual machines run at different speeds from one hour to the next (we have seen a
    benchmark's CPU per resource vary by half, with a tight loop's speed unchanged: what
    changes is memory and cache, so the probe allocates as the services do). Each result
    carries the probe taken just before it ran, so that runs can be compared fairly.
    """
    blobs = [orjson.dumps({**PROBE_DOCUMENT, "id": f"probe-{n}"}) for n in range(10_000)]
    best = float("inf")
    for _ in range(3):
        began = time.perf_counter()
        kept = [orjson.loads(blob) for blob in blobs]
        again = [orjson.dumps(document, option=orjson.OPT_SORT_KEYS) for document in kept]
        best = min(best, time.perf_counter() - began)
        del kept, again
    return round(best * 1000, 1)


def machine() -> dict[str, Any]:
    found: dict[str, Any] = {
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
    }
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text()
    except OSError:
        return found
    for line in cpuinfo.splitlines():
        if line.startswith("model name"):
            found["cpu"] = line.split(":", 1)[1].strip()
            break
    return found


def _format(value: float) -> str:
    if abs(value) >= 100:
        return f"{value:,.0f}"
    return f"{value:,.2f}"


def _params(params: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in params.items())


def results_table(results: list[Result], with_params: bool = True) -> Table:
    table = Table(title="JoinedUp benchmarks", show_lines=with_params)
    table.add_column("benchmark", style="bold", no_wrap=True)
    table.add_column("value", justify="right", style="green", no_wrap=True)
    table.add_column("unit", no_wrap=True)
    table.add_column("seconds", justify="right", no_wrap=True)
    if with_params:
        table.add_column("params", style="dim", overflow="fold")
    for result in results:
        row = [result.name, _format(result.value), result.unit, f"{result.seconds:.2f}"]
        table.add_row(*row, *([_params(result.params)] if with_params else []))
    return table


@app.command()
def run(
    out: Annotated[Path, typer.Option(help="Where to write the results (JSON)")] = DEFAULT_OUT,
    quick: Annotated[
        bool, typer.Option(help="Small sizes: a smoke test, not a measurement")
    ] = False,
    only: Annotated[
        list[str] | None,
        typer.Option(help="Run only this benchmark (a name or a glob such as 'bus.*'); repeatable"),
    ] = None,
    list_: Annotated[bool, typer.Option("--list", help="List the benchmarks and exit")] = False,
) -> None:
    """Run the benchmarks (those needing Kafka or PostgreSQL are skipped when not configured)."""
    console = Console()
    if list_:
        for benchmark in REGISTRY.values():
            console.print(f"[bold]{benchmark.name}[/]  {benchmark.description}")
        return
    selected = select(only)
    started_at = datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
    began = time.perf_counter()
    results: list[Result] = []
    skipped: list[dict[str, str]] = []
    failed: list[dict[str, str]] = []
    progress = Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=True,
    )
    with progress:
        ctx = Context(quick=quick, console=console, progress=progress)
        for benchmark in selected:
            console.print(f"[bold]{benchmark.name}[/] [dim]{benchmark.description}[/]")
            probe = cpu_probe_ms()
            clock = time.perf_counter()
            try:
                got = asyncio.run(benchmark.run(ctx))
            except Skip as reason:
                console.print(f"  [yellow]skipped:[/] {reason}")
                skipped.append({"name": benchmark.name, "reason": str(reason)})
                continue
            except Exception as error:
                console.print(f"  [red]failed:[/] {type(error).__name__}: {error}")
                failed.append({"name": benchmark.name, "error": f"{type(error).__name__}: {error}"})
                continue
            for result in got:
                result.params.setdefault("cpu_probe_ms", probe)
                console.print(f"  {result.name}: [green]{_format(result.value)}[/] {result.unit}")
            console.print(f"  [dim]done in {time.perf_counter() - clock:.1f} s[/]")
            results.extend(got)
    if results:
        # The sizes need room; on a narrow terminal they are only in the JSON.
        wide = console.width >= WIDE_ENOUGH
        console.print(results_table(results, with_params=wide))
        if not wide:
            console.print(f"[dim]The sizes used (params) are in {out}.[/]")
    report = {
        "machine": machine(),
        "started_at": started_at,
        "quick": quick,
        "total_seconds": round(time.perf_counter() - began, 2),
        "results": [r.to_json() for r in results],
        "skipped": skipped,
        "failed": failed,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(orjson.dumps(report, option=orjson.OPT_INDENT_2) + b"\n")
    console.print(f"Results written to [bold]{out}[/] ({report['total_seconds']} s in all)")
    if failed:
        raise typer.Exit(1)


def main() -> None:
    app()
