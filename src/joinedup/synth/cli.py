"""``joinedup synth``: generate a synthetic population with its provider feeds, and replay them.

Mounted by the main CLI with ``app.add_typer(synth_app, name="synth")``.
"""

from __future__ import annotations

import asyncio
import os
from datetime import date
from pathlib import Path
from typing import Annotated

import httpx
import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table

from joinedup.synth import replay as replaying
from joinedup.synth.generate import DEFAULT_START, default_workers, generate
from joinedup.synth.noise import Noise

synth_app = typer.Typer(
    help="A synthetic North West London-like population and its provider feeds.",
    no_args_is_help=True,
)
console = Console(stderr=True)


def _progress() -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
    )


@synth_app.command("generate")
def generate_command(
    out: Annotated[Path, typer.Option("--out", help="Directory to write (created)")] = Path(
        "var/synth"
    ),
    patients: Annotated[int, typer.Option(help="Registered patients")] = 50_000,
    seed: Annotated[int, typer.Option(help="Same seed, same world, byte for byte")] = 2026,
    years: Annotated[float, typer.Option(help="Years the feeds cover")] = 2.0,
    start: Annotated[
        str, typer.Option(help="First day of the feeds (YYYY-MM-DD)")
    ] = DEFAULT_START.isoformat(),
    workers: Annotated[int | None, typer.Option(help="Processes (default: the cores)")] = None,
    noise: Annotated[bool, typer.Option("--noise/--no-noise", help="Data-quality noise")] = True,
) -> None:
    """Generate the population, its feeds (FHIR, HL7 v2, CSV) and the ground truth."""
    try:
        first_day = date.fromisoformat(start)
    except ValueError as error:
        raise typer.BadParameter(f"--start must be YYYY-MM-DD: {error}") from error
    with _progress() as progress:
        tasks: dict[str, TaskID] = {}

        def report(stage: str, done: int, total: int) -> None:
            if stage not in tasks:
                label = "Generating patients" if stage == "patients" else "Merging feeds"
                tasks[stage] = progress.add_task(label, total=total)
            progress.update(tasks[stage], completed=done)

        try:
            manifest = generate(
                out,
                patients=patients,
                seed=seed,
                years=years,
                start=first_day,
                workers=workers or default_workers(),
                noise=Noise() if noise else Noise.none(),
                progress=report,
            )
        except ValueError as error:
            console.print(f"[red]{error}[/]")
            raise typer.Exit(2) from error
    timing = manifest["timing"]
    console.print(
        f"[green]Generated[/] {patients:,} patients in {manifest['practices']} practices "
        f"({manifest['mdgs']} MDGs), {len(manifest['feeds'])} feeds, "
        f"{manifest['truth']['alerts_count']:,} expected alerts into {out} "
        f"in {timing['total_seconds']:.1f} s ({timing['patients_per_minute']:,} patients/min)."
    )


@synth_app.command("replay")
def replay_command(
    directory: Annotated[Path, typer.Argument(help="A directory made by `synth generate`")],
    url: Annotated[str, typer.Option(help="Base URL of the running instance")] = (
        "http://127.0.0.1:8000"
    ),
    rate: Annotated[str | None, typer.Option(help="Limit, e.g. 500/s or 30/min")] = None,
    data_dir: Annotated[
        Path | None,
        typer.Option(help="Embedded instance's data dir: register the feeds, mint tokens"),
    ] = None,
    tokens: Annotated[
        Path | None, typer.Option(help="JSON {feed id: token} for a remote instance")
    ] = None,
    hl7: Annotated[str, typer.Option(help="How HL7 v2 travels: http or mllp")] = "http",
    mllp_port: Annotated[int, typer.Option(help="MLLP port of ingest-acute")] = 2575,
    concurrency: Annotated[int, typer.Option(help="Parallel senders (per-patient order)")] = 4,
    feed: Annotated[list[str] | None, typer.Option(help="Only this feed; repeat for more")] = None,
    since: Annotated[
        str | None, typer.Option(help="Only the initial load and what was sent from then on")
    ] = None,
    limit: Annotated[int | None, typer.Option(help="Stop after this many messages")] = None,
) -> None:
    """Send the feeds to a running instance in time order; count sent/acknowledged/rejected."""
    if not (directory / "manifest.json").exists():
        raise typer.BadParameter(f"{directory} has no manifest.json; run `synth generate` first")
    if tokens is not None:
        feed_tokens = replaying.load_tokens(tokens)
    else:
        target = data_dir or Path(os.environ.get("JOINEDUP_DATA_DIR", "var"))
        feed_tokens = replaying.register_feeds(directory, target)
    try:
        per_second = replaying.parse_rate(rate)
    except (ValueError, KeyError) as error:
        raise typer.BadParameter(f"--rate like 500/s or 30/min: {error}") from error
    feeds = set(feed) if feed else None
    total = replaying.total_messages(directory, feeds)
    if limit is not None:
        total = min(total, limit)
    tally = asyncio.run(
        _replay(
            directory,
            url,
            feed_tokens,
            per_second,
            hl7,
            mllp_port,
            concurrency,
            feeds,
            since,
            limit,
            total,
        )
    )
    _report(tally)


async def _replay(
    directory: Path,
    url: str,
    tokens: dict[str, str],
    rate: float | None,
    hl7: str,
    mllp_port: int,
    concurrency: int,
    feeds: set[str] | None,
    since: str | None,
    limit: int | None,
    total: int,
) -> replaying.Tally:
    async with httpx.AsyncClient(base_url=url, timeout=60.0) as client:
        with _progress() as progress:
            task = progress.add_task("Replaying", total=total)
            replayer = replaying.Replayer(
                directory,
                client,
                tokens,
                hl7_transport=hl7,
                mllp=replaying.mllp_address(url, mllp_port),
                concurrency=concurrency,
                rate=rate,
                on_sent=lambda: progress.advance(task),
            )
            return await replayer.run(feeds=feeds, limit=limit, since=since)


def _report(tally: replaying.Tally) -> None:
    table = Table(title=f"Replay ({tally.seconds:.1f} s)")
    for column in ("kind", "sent", "acknowledged", "rejected", "of which unavailable"):
        table.add_column(column, justify="right" if column != "kind" else "left")
    for kind, counts in sorted(tally.kinds.items()):
        table.add_row(
            kind,
            f"{counts.sent:,}",
            f"{counts.acknowledged:,}",
            f"{counts.rejected:,}",
            f"{counts.unavailable:,}",
        )
    table.add_row("all", f"{tally.sent:,}", f"{tally.acknowledged:,}", f"{tally.rejected:,}", "")
    console.print(table)
    for reason, count in tally.reasons.most_common(10):
        console.print(f"  [yellow]{count:,}[/] {reason}")
