"""``joinedup``: run the platform, its services, feeds and tokens from one command."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer
import uvicorn
from fastapi import FastAPI
from rich.console import Console

from fhir_common.feeds import Feed, FeedKind, FeedRegistry
from fhir_common.settings import Settings
from joinedup.services import SERVICES
from joinedup.synth.cli import synth_app

app = typer.Typer(help="JoinedUp: joined-up care on FHIR R4 and Kafka.", no_args_is_help=True)
feeds_app = typer.Typer(help="Provider feeds that may push data.", no_args_is_help=True)
app.add_typer(feeds_app, name="feeds")
app.add_typer(synth_app, name="synth")
console = Console(stderr=True)

DataDir = Annotated[
    Path, typer.Option("--data-dir", help="Where embedded mode keeps its data and keys.")
]
DEFAULT_DATA_DIR = Path(os.environ.get("JOINEDUP_DATA_DIR", "var"))


def _registry(data_dir: Path) -> FeedRegistry:
    return FeedRegistry(Settings(data_dir=data_dir).resolved_feeds_file())


@app.command()
def serve(
    service: Annotated[str, typer.Argument(help=f"One of: {', '.join(SERVICES)}")],
    host: str = "127.0.0.1",
    port: Annotated[int | None, typer.Option(help="Default: the service's own port")] = None,
) -> None:
    """Run one service on its own (distributed mode: Kafka and PostgreSQL from JOINEDUP_*)."""
    entry = SERVICES.get(service)
    if entry is None:
        raise typer.BadParameter(f"unknown service {service!r}; one of {', '.join(SERVICES)}")
    uvicorn.run(entry.build(), host=host, port=port or entry.port, log_config=None)


@app.command()
def run(
    port: int = 8000,
    host: str = "127.0.0.1",
    mllp_port: Annotated[int, typer.Option(help="HL7 v2 MLLP listener port")] = 2575,
    data_dir: DataDir = DEFAULT_DATA_DIR,
    demo: Annotated[bool, typer.Option("--demo/--no-demo", help="Load demo data")] = True,
) -> None:
    """Run the whole platform in one process (embedded mode)."""
    from joinedup.embedded import create_embedded_app
    from joinedup.synth.demo import load_synthetic_demo

    async def announce(app: FastAPI) -> None:
        if demo:
            loaded = await load_synthetic_demo(app)
            console.print(
                f"[green]Demo data loaded:[/] {loaded['acknowledged']:,} messages acknowledged, "
                f"{loaded['rejected']:,} rejected (of {loaded['messages_in_world']:,} generated)"
            )
        console.print(
            f"[bold]JoinedUp is running:[/] http://{host}:{port}/\n"
            f"  a token:        uv run joinedup token --data-dir {data_dir}\n"
            f"  a feed's token: uv run joinedup token --feed gp-y90001 --data-dir {data_dir}\n"
            f"  the feeds:      uv run joinedup feeds list --data-dir {data_dir}\n"
            f"  API docs:       http://{host}:{port}/record/docs"
        )

    os.environ.setdefault("JOINEDUP_LOG_JSON", "false")
    platform = create_embedded_app(
        data_dir, on_started=announce, overrides={"mllp_port": mllp_port}
    )
    uvicorn.run(platform, host=host, port=port, log_level="info")


@app.command()
def token(
    feed: Annotated[str | None, typer.Option(help="Print this feed's push token")] = None,
    scope: Annotated[list[str] | None, typer.Option(help="SMART v2 scope; repeat for more")] = None,
    role: Annotated[str | None, typer.Option(help="e.g. consultant, gp, care-coordinator")] = None,
    org: Annotated[str | None, typer.Option(help="ODS code of the user's organisation")] = None,
    practitioner: Annotated[str | None, typer.Option(help="e.g. Practitioner/123")] = None,
    ttl: Annotated[int, typer.Option(help="Lifetime in seconds")] = 8 * 3600,
    data_dir: DataDir = DEFAULT_DATA_DIR,
) -> None:
    """Print a bearer token that embedded mode accepts."""
    from joinedup.tokens import feed_token, user_token

    if feed is not None:
        registered = _registry(data_dir).get(feed)
        if registered is None:
            console.print(f"[red]No feed {feed!r}.[/] Add it: joinedup feeds add {feed} ...")
            raise typer.Exit(1)
        typer.echo(feed_token(data_dir, registered, ttl_seconds=ttl))
        return
    typer.echo(
        user_token(
            data_dir, scopes=scope, role=role, org=org, practitioner=practitioner, ttl_seconds=ttl
        )
    )


@feeds_app.command("add")
def feeds_add(
    feed_id: Annotated[str, typer.Argument(metavar="ID")],
    kind: Annotated[FeedKind, typer.Option(help="hl7v2, fhir or csv")],
    ods: Annotated[str, typer.Option(help="ODS code of the provider")],
    setting: Annotated[
        str, typer.Option(help="primary, acute, community, mental-health or social-care")
    ],
    sender: Annotated[str | None, typer.Option(help="MSH-4 sending facility (hl7v2)")] = None,
    description: str = "",
    data_dir: DataDir = DEFAULT_DATA_DIR,
) -> None:
    """Register (or replace) a provider feed; running instances see it at once."""
    try:
        feed = Feed(
            id=feed_id,
            kind=kind,
            ods=ods.upper(),
            setting=setting,
            sender=sender,
            description=description,
        )
    except ValueError as error:
        console.print(f"[red]Invalid feed:[/] {error}")
        raise typer.Exit(2) from error
    _registry(data_dir).add(feed)
    console.print(f"Feed [bold]{feed.id}[/] registered ({feed.kind}, {feed.ods}, {feed.setting}).")


@feeds_app.command("list")
def feeds_list(data_dir: DataDir = DEFAULT_DATA_DIR) -> None:
    """List the registered feeds."""
    for feed in _registry(data_dir).all():
        typer.echo(f"{feed.id}\t{feed.kind}\t{feed.ods}\t{feed.setting}\t{feed.sender or ''}")


@app.command()
def openapi(
    directory: Annotated[Path, typer.Option(help="Where the documents go")] = Path("docs/openapi"),
    check: Annotated[bool, typer.Option(help="Only check that they are current")] = False,
) -> None:
    """Write each service's OpenAPI document (or check that the committed ones are current)."""
    from joinedup import openapi as documents

    if check:
        stale = documents.stale(directory)
        if stale:
            typer.echo(f"out of date in {directory}: {', '.join(stale)} (run make openapi)")
            raise typer.Exit(1)
        typer.echo(f"{directory}: current")
        return
    for path in documents.write(directory):
        typer.echo(f"wrote {path}")


def main() -> None:
    app()
