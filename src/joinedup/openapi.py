"""The services' OpenAPI documents, written to ``docs/openapi/`` so that the API a change makes
is reviewed with it: ``joinedup openapi`` writes them, ``joinedup openapi --check`` (run by the
tests) fails when the code and the committed documents differ."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson

from fhir_common.bus import InProcessBus
from joinedup.services import SERVICES

DEFAULT_DIRECTORY = Path("docs/openapi")


def documents() -> dict[str, bytes]:
    """Each service's OpenAPI document as stable, readable JSON (keys sorted, indented)."""
    found: dict[str, bytes] = {}
    for name, entry in SERVICES.items():
        schema: dict[str, Any] = entry.build(InProcessBus()).openapi()
        found[f"{name}.json"] = orjson.dumps(
            schema, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS | orjson.OPT_APPEND_NEWLINE
        )
    return found


def write(directory: Path = DEFAULT_DIRECTORY) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for filename, content in documents().items():
        path = directory / filename
        path.write_bytes(content)
        written.append(path)
    return written


def stale(directory: Path = DEFAULT_DIRECTORY) -> list[str]:
    """The documents in ``directory`` that are missing or differ from what the code serves."""
    return [
        filename
        for filename, content in documents().items()
        if not (directory / filename).is_file() or (directory / filename).read_bytes() != content
    ]
