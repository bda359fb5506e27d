"""The committed OpenAPI documents (docs/openapi/) are what the services serve."""

from __future__ import annotations

from pathlib import Path

import orjson
from typer.testing import CliRunner

from joinedup.cli import app
from joinedup.openapi import documents, stale

COMMITTED = Path(__file__).resolve().parents[1] / "docs" / "openapi"


def test_committed_documents_are_current() -> None:
    assert stale(COMMITTED) == [], "docs/openapi is out of date: run `make openapi` and commit"


def test_every_service_documents_its_operations() -> None:
    found = {name: orjson.loads(content) for name, content in documents().items()}
    assert set(found) == {
        f"{s}.json" for s in ("ingest-gp", "ingest-acute", "record", "risk", "careplan", "alerts")
    }
    for schema in found.values():
        assert {"/health", "/ready"} <= set(schema["paths"])
    assert "/fhir/Patient/{id}/$everything" in found["record.json"]["paths"]
    assert "/summary/{patient}" in found["record.json"]["paths"]
    assert "/fhir" in found["ingest-gp.json"]["paths"]


def test_check_fails_on_a_stale_document(tmp_path: Path) -> None:
    runner = CliRunner()
    assert runner.invoke(app, ["openapi", "--directory", str(tmp_path)]).exit_code == 0
    assert runner.invoke(app, ["openapi", "--directory", str(tmp_path), "--check"]).exit_code == 0
    (tmp_path / "record.json").write_text("{}")
    outcome = runner.invoke(app, ["openapi", "--directory", str(tmp_path), "--check"])
    assert outcome.exit_code == 1
    assert "record.json" in outcome.output
