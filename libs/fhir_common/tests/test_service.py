"""The app factory every service uses (fhir_common.service): probes, metrics, errors as
OperationOutcomes, trace propagation, token verification and the lifespan."""

from __future__ import annotations

import os
import re
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Annotated

import httpx
import pytest
from asgi_lifespan import LifespanManager
from fastapi import APIRouter, Depends, FastAPI

from fhir_common.auth import LocalSigner, Principal, get_principal
from fhir_common.bus import InProcessBus
from fhir_common.errors import FhirError
from fhir_common.observability import current_traceparent
from fhir_common.service import (
    ServiceContext,
    ServiceSpec,
    create_service_app,
    token_verifier,
)
from fhir_common.settings import Mode, Settings

FHIR_JSON = "application/fhir+json"
TRACEPARENT = re.compile(r"^00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})$")


@pytest.fixture(scope="module", autouse=True)
def no_joinedup_environment() -> Iterator[None]:
    """Settings come from the tests, not from whatever JOINEDUP_* the shell exports (a
    distributed-mode shell would otherwise change the mode, feeds file, issuer or database)."""
    with pytest.MonkeyPatch.context() as monkeypatch:
        for name in list(os.environ):
            if name.startswith("JOINEDUP_"):
                monkeypatch.delenv(name)
        yield


def probe_router() -> APIRouter:
    router = APIRouter()

    @router.get("/fhir/boom")
    async def boom() -> None:
        raise FhirError.single(409, "conflict", "it clashed", ["Patient.id"])

    @router.get("/fhir/whoami")
    async def whoami(principal: Annotated[Principal, Depends(get_principal)]) -> dict[str, str]:
        return {"subject": principal.subject}

    @router.get("/trace")
    async def trace() -> dict[str, str | None]:
        return {"traceparent": current_traceparent.get()}

    return router


class Started:
    def __init__(self) -> None:
        self.contexts: list[ServiceContext] = []
        self.stopped = False


def spec(started: Started, schema: str | None = None) -> ServiceSpec:
    async def on_start(ctx: ServiceContext) -> None:
        started.contexts.append(ctx)

    async def on_stop(ctx: ServiceContext) -> None:
        started.stopped = True

    return ServiceSpec(
        name="probe",
        description="a service for testing the factory",
        router=probe_router(),
        schema=schema,
        on_start=on_start,
        on_stop=on_stop,
    )


async def running(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    async with LifespanManager(app, startup_timeout=60, shutdown_timeout=60):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://probe") as client:
            yield client


@pytest.fixture
def bus() -> InProcessBus:
    return InProcessBus()


@pytest.fixture
def started() -> Started:
    return Started()


@pytest.fixture
async def client(
    tmp_path: Path, bus: InProcessBus, started: Started
) -> AsyncIterator[httpx.AsyncClient]:
    """The service with a bus passed in (embedded mode), which it does not start itself."""
    app = create_service_app(spec(started), Settings(data_dir=tmp_path), bus)
    async for c in running(app):
        yield c


# --- probes --------------------------------------------------------------------------------------


async def test_health(client: httpx.AsyncClient) -> None:
    response = await client.get("/health")
    assert response.status_code == 200
    assert response.json() == {"status": "ok", "service": "probe"}


async def test_ready_is_503_while_the_bus_is_not_running(
    client: httpx.AsyncClient, bus: InProcessBus
) -> None:
    response = await client.get("/ready")
    assert response.status_code == 503
    assert response.headers["content-type"].startswith(FHIR_JSON)
    outcome = response.json()
    assert outcome["resourceType"] == "OperationOutcome"
    [issue] = outcome["issue"]
    assert issue["code"] == "transient"
    assert issue["diagnostics"].startswith("bus not ready")

    await bus.start()
    try:
        ready = await client.get("/ready")
        assert ready.status_code == 200
        assert ready.json() == {"status": "ready", "service": "probe"}
    finally:
        await bus.stop()
    assert (await client.get("/ready")).status_code == 503


async def test_ready_is_503_when_the_database_does_not_answer(
    tmp_path: Path, bus: InProcessBus, started: Started
) -> None:
    settings = Settings(
        data_dir=tmp_path,
        database_url="postgresql+asyncpg://nobody:secret@127.0.0.1:1/nothing",
        auto_migrate=False,
    )
    app = create_service_app(spec(started, schema="probe"), settings, bus)
    await bus.start()
    try:
        async for client in running(app):
            response = await client.get("/ready")
            assert response.status_code == 503
            diagnostics = [i["diagnostics"] for i in response.json()["issue"]]
            assert len(diagnostics) == 1
            assert diagnostics[0].startswith("database not ready")
            assert "secret" not in response.text
    finally:
        await bus.stop()


async def test_metrics_are_prometheus_text(client: httpx.AsyncClient) -> None:
    await client.get("/health")
    response = await client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    body = response.text
    assert "# TYPE joinedup_http_requests_total counter" in body
    assert re.search(
        r'^joinedup_http_requests_total\{method="GET",service="probe",status="200"\} [0-9.]+$',
        body,
        re.MULTILINE,
    )
    assert "joinedup_http_request_seconds_bucket" in body


async def test_openapi_docs(client: httpx.AsyncClient) -> None:
    assert (await client.get("/docs")).status_code == 200
    schema = (await client.get("/openapi.json")).json()
    assert schema["info"]["title"] == "JoinedUp probe"
    assert {"/health", "/ready"} <= set(schema["paths"])


# --- errors --------------------------------------------------------------------------------------


async def test_an_unknown_route_is_a_404_operation_outcome(client: httpx.AsyncClient) -> None:
    response = await client.get("/fhir/NoSuchThing/at/all")
    assert response.status_code == 404
    assert response.headers["content-type"].startswith(FHIR_JSON)
    outcome = response.json()
    assert outcome["resourceType"] == "OperationOutcome"
    assert outcome["issue"][0]["code"] == "not-found"


async def test_a_wrong_method_is_a_405_operation_outcome(client: httpx.AsyncClient) -> None:
    response = await client.post("/health")
    assert response.status_code == 405
    assert response.json()["issue"][0]["code"] == "not-supported"


async def test_a_fhir_error_keeps_its_status_and_issues(client: httpx.AsyncClient) -> None:
    response = await client.get("/fhir/boom")
    assert response.status_code == 409
    assert response.json() == {
        "resourceType": "OperationOutcome",
        "issue": [
            {
                "severity": "error",
                "code": "conflict",
                "diagnostics": "it clashed",
                "expression": ["Patient.id"],
            }
        ],
    }


# --- trace context -------------------------------------------------------------------------------


async def test_the_traceparent_sent_is_continued(client: httpx.AsyncClient) -> None:
    sent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    response = await client.get("/trace", headers={"traceparent": sent})
    echoed = response.headers["traceparent"]
    match = TRACEPARENT.match(echoed)
    assert match is not None
    assert match.group(1) == "4bf92f3577b34da6a3ce929d0e0e4736"  # same trace
    assert match.group(2) != "00f067aa0ba902b7"  # our own span
    assert match.group(3) == "01"
    assert response.json() == {"traceparent": echoed}  # what handlers and the bus see


@pytest.mark.parametrize("sent", [None, "garbage", "00-" + "0" * 32 + "-00f067aa0ba902b7-01"])
async def test_without_a_usable_traceparent_a_trace_is_started(
    client: httpx.AsyncClient, sent: str | None
) -> None:
    headers = {"traceparent": sent} if sent else {}
    response = await client.get("/health", headers=headers)
    match = TRACEPARENT.match(response.headers["traceparent"])
    assert match is not None
    assert match.group(1) != "0" * 32


async def test_errors_carry_the_trace_too(client: httpx.AsyncClient) -> None:
    sent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    response = await client.get("/nowhere", headers={"traceparent": sent})
    assert response.status_code == 404
    assert response.headers["traceparent"].split("-")[1] == "4bf92f3577b34da6a3ce929d0e0e4736"


# --- lifespan ------------------------------------------------------------------------------------


async def test_the_lifespan_builds_the_context_and_stops(
    tmp_path: Path, bus: InProcessBus, started: Started
) -> None:
    app = create_service_app(spec(started), Settings(data_dir=tmp_path), bus)
    async for _ in running(app):
        [ctx] = started.contexts
        assert (ctx.name, ctx.bus, ctx.db) == ("probe", bus, None)
        assert ctx.feeds.path == tmp_path / "feeds.json"
        assert not started.stopped
    assert started.stopped


async def test_a_service_that_owns_its_bus_starts_and_stops_it(tmp_path: Path) -> None:
    started = Started()
    app = create_service_app(spec(started), Settings(data_dir=tmp_path))
    async for client in running(app):
        assert (await client.get("/ready")).status_code == 200
        the_bus = started.contexts[0].bus
        assert isinstance(the_bus, InProcessBus)
    with pytest.raises(RuntimeError):
        await the_bus.ping()


# --- token verification --------------------------------------------------------------------------


def test_embedded_mode_verifies_tokens_of_its_own_key(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path)
    verifier = token_verifier(settings)
    signer = LocalSigner.load_or_create(settings.signing_key_file())
    token = signer.mint(
        subject="u", scopes=["user/*.rs"], issuer=settings.auth_issuer, audience="joinedup"
    )
    assert verifier.verify(token).subject == "u"
    other = LocalSigner.generate().mint(
        subject="u", scopes=["user/*.rs"], issuer=settings.auth_issuer, audience="joinedup"
    )
    with pytest.raises(FhirError) as info:
        verifier.verify(other)
    assert info.value.status == 401


def test_distributed_mode_needs_a_way_to_verify_tokens(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="JOINEDUP_AUTH_PUBLIC_KEY_FILE"):
        token_verifier(Settings(data_dir=tmp_path, mode=Mode.DISTRIBUTED))
    assert not (tmp_path / "keys").exists()  # and it never makes a signing key of its own


async def test_routes_need_a_token_of_the_services_key(
    client: httpx.AsyncClient, tmp_path: Path
) -> None:
    """The factory installs the verifier that ``get_principal`` uses."""
    assert (await client.get("/fhir/whoami")).status_code == 401
    settings = Settings(data_dir=tmp_path)
    token = LocalSigner.load_or_create(settings.signing_key_file()).mint(
        subject="dr-a", scopes=["user/*.rs"], issuer="joinedup", audience="joinedup"
    )
    response = await client.get("/fhir/whoami", headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 200
    assert response.json() == {"subject": "dr-a"}
