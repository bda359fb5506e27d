"""The ``joinedup`` command line (joinedup.cli): feeds, tokens and serve."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from fhir_common.auth import TokenVerifier
from fhir_common.errors import FhirError
from fhir_common.feeds import FeedKind, FeedRegistry
from fhir_common.service import token_verifier
from fhir_common.settings import Settings
from joinedup.cli import app


@pytest.fixture(scope="module", autouse=True)
def no_joinedup_environment() -> Iterator[None]:
    """Settings come from the tests, not from whatever JOINEDUP_* the shell exports (a
    distributed-mode shell would otherwise change the mode, feeds file, issuer or database)."""
    with pytest.MonkeyPatch.context() as monkeypatch:
        for name in list(os.environ):
            if name.startswith("JOINEDUP_"):
                monkeypatch.delenv(name)
        yield


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "var"


def invoke(runner: CliRunner, data_dir: Path, *args: str) -> tuple[int, str, str]:
    result = runner.invoke(app, [*args, "--data-dir", str(data_dir)])
    return result.exit_code, result.stdout, result.stderr


def add_gp_feed(runner: CliRunner, data_dir: Path, feed_id: str = "gp-a81001") -> None:
    code, _, err = invoke(
        runner,
        data_dir,
        "feeds",
        "add",
        feed_id,
        "--kind",
        "fhir",
        "--ods",
        "a81001",
        "--setting",
        "primary",
        "--description",
        "Dr Smith's practice",
    )
    assert code == 0, err
    assert f"Feed {feed_id} registered" in err


def verifier(data_dir: Path) -> TokenVerifier:
    return token_verifier(Settings(data_dir=data_dir))


# --- feeds ---------------------------------------------------------------------------------------


def test_feeds_add_then_list(runner: CliRunner, data_dir: Path) -> None:
    add_gp_feed(runner, data_dir)
    code, _, err = invoke(
        runner,
        data_dir,
        "feeds",
        "add",
        "acute-rr8",
        "--kind",
        "hl7v2",
        "--ods",
        "RR8",
        "--setting",
        "acute",
        "--sender",
        "RR8",
    )
    assert code == 0, err

    code, out, _ = invoke(runner, data_dir, "feeds", "list")
    assert code == 0
    assert out.splitlines() == [
        "acute-rr8\thl7v2\tRR8\tacute\tRR8",
        "gp-a81001\tfhir\tA81001\tprimary\t",
    ]
    # what the services read
    feed = FeedRegistry(Settings(data_dir=data_dir).resolved_feeds_file()).get("gp-a81001")
    assert feed is not None
    assert (feed.kind, feed.ods, feed.description) == (
        FeedKind.FHIR,
        "A81001",
        "Dr Smith's practice",
    )


def test_feeds_list_when_there_are_none(runner: CliRunner, data_dir: Path) -> None:
    code, out, _ = invoke(runner, data_dir, "feeds", "list")
    assert (code, out) == (0, "")


@pytest.mark.parametrize(
    ("option", "value", "says"),
    [
        ("--ods", "A8-1001", "ods"),
        ("--ods", "TOOLONGODS", "ods"),
        ("--setting", "hospital", "setting"),
    ],
)
def test_feeds_add_refuses_an_invalid_feed(
    runner: CliRunner, data_dir: Path, option: str, value: str, says: str
) -> None:
    options = {"--kind": "fhir", "--ods": "A81001", "--setting": "primary", option: value}
    args = [a for pair in options.items() for a in pair]
    code, _, err = invoke(runner, data_dir, "feeds", "add", "gp-x", *args)
    assert code != 0
    assert "Invalid feed" in err
    assert says in err
    assert not Settings(data_dir=data_dir).resolved_feeds_file().exists()


def test_feeds_add_refuses_an_unknown_kind(runner: CliRunner, data_dir: Path) -> None:
    code, _, err = invoke(
        runner, data_dir, "feeds", "add", "x", "--kind", "xml", "--ods", "RR8", "--setting", "acute"
    )
    assert code == 2
    assert "xml" in err


# --- tokens --------------------------------------------------------------------------------------


def test_token_prints_a_jwt_the_services_accept(runner: CliRunner, data_dir: Path) -> None:
    code, out, err = invoke(runner, data_dir, "token")
    assert code == 0, err
    token = out.strip()
    assert token.count(".") == 2
    principal = verifier(data_dir).verify(token)
    assert [str(s) for s in principal.scopes] == ["user/*.rs"]
    assert principal.allows("Patient", "r")
    assert principal.allows("Observation", "s")
    assert not principal.allows("Patient", "c")
    assert principal.feed is None


def test_token_with_scopes_and_claims(runner: CliRunner, data_dir: Path) -> None:
    code, out, err = invoke(
        runner,
        data_dir,
        "token",
        "--scope",
        "user/Patient.rs",
        "--scope",
        "user/CarePlan.cru",
        "--role",
        "consultant",
        "--org",
        "RR8",
        "--practitioner",
        "Practitioner/123",
    )
    assert code == 0, err
    principal = verifier(data_dir).verify(out.strip())
    assert [str(s) for s in principal.scopes] == ["user/Patient.rs", "user/CarePlan.cru"]
    assert (principal.role, principal.org, principal.practitioner) == (
        "consultant",
        "RR8",
        "Practitioner/123",
    )


def test_a_tokens_lifetime_is_its_ttl(runner: CliRunner, data_dir: Path) -> None:
    code, out, _ = invoke(runner, data_dir, "token", "--ttl", "60")
    assert code == 0
    claims = verifier(data_dir).verify(out.strip()).claims
    assert claims["exp"] - claims["iat"] == 60


def test_an_expired_token_is_refused(runner: CliRunner, data_dir: Path) -> None:
    code, out, _ = invoke(runner, data_dir, "token", "--ttl", "-120")
    assert code == 0
    with pytest.raises(FhirError) as info:
        verifier(data_dir).verify(out.strip())
    assert info.value.status == 401


def test_a_feeds_token(runner: CliRunner, data_dir: Path) -> None:
    add_gp_feed(runner, data_dir)
    code, out, err = invoke(runner, data_dir, "token", "--feed", "gp-a81001")
    assert code == 0, err
    principal = verifier(data_dir).verify(out.strip())
    assert principal.feed == "gp-a81001"
    assert principal.org == "A81001"
    assert principal.subject == "feed:gp-a81001"
    assert principal.allows("Patient", "c")
    assert principal.allows("Encounter", "u")
    assert not principal.allows("Patient", "r")  # a feed pushes; it does not read


def test_a_token_for_an_unknown_feed_is_refused(runner: CliRunner, data_dir: Path) -> None:
    add_gp_feed(runner, data_dir)
    code, out, err = invoke(runner, data_dir, "token", "--feed", "gp-nope")
    assert code == 1
    assert out == ""
    assert "No feed 'gp-nope'" in err


def test_tokens_of_another_data_dir_are_refused(runner: CliRunner, tmp_path: Path) -> None:
    code, out, _ = invoke(runner, tmp_path / "one", "token")
    assert code == 0
    with pytest.raises(FhirError) as info:
        verifier(tmp_path / "two").verify(out.strip())
    assert info.value.status == 401


def test_the_signing_key_is_private(runner: CliRunner, data_dir: Path) -> None:
    invoke(runner, data_dir, "token")
    key = Settings(data_dir=data_dir).signing_key_file()
    assert key.stat().st_mode & 0o077 == 0


# --- serve ---------------------------------------------------------------------------------------


def test_serve_refuses_an_unknown_service(runner: CliRunner) -> None:
    result = runner.invoke(app, ["serve", "nosuch"])
    assert result.exit_code != 0
    assert "unknown service 'nosuch'" in result.output
    assert "ingest-gp" in result.output  # and says which there are


def test_help_lists_the_commands(runner: CliRunner) -> None:
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for command in ("serve", "run", "token", "feeds"):
        assert command in result.output


def test_feeds_file_is_json_under_the_data_dir(runner: CliRunner, data_dir: Path) -> None:
    add_gp_feed(runner, data_dir)
    written = json.loads((data_dir / "feeds.json").read_text())
    assert [f["id"] for f in written] == ["gp-a81001"]
