"""Who may push (ingest_gp.routes.authorise): only a registered feed's token, of the endpoint's
kind, for the feed's own organisation; everyone else is refused before anything is read."""

from __future__ import annotations

from typing import Any

import pytest

from fhir_common.feeds import Feed, FeedKind

ENDPOINTS = [
    ("/fhir", "application/fhir+json", b'{"resourceType": "Bundle", "type": "batch"}'),
    ("/fhir/$import", "application/fhir+ndjson", b'{"resourceType": "Patient"}\n'),
    ("/csv", "text/csv", b"a,b\r\n1,2\r\n"),
]


@pytest.mark.parametrize(("path", "content_type", "body"), ENDPOINTS)
async def test_no_token_is_401(gp: Any, path: str, content_type: str, body: bytes) -> None:
    response = await gp.client.post(path, content=body, headers={"Content-Type": content_type})
    assert response.status_code == 401
    assert response.json()["resourceType"] == "OperationOutcome"


@pytest.mark.parametrize(("path", "content_type", "body"), ENDPOINTS)
async def test_a_token_that_is_not_a_feeds_is_403(
    gp: Any, path: str, content_type: str, body: bytes
) -> None:
    reader = gp.signer.mint(
        subject="a-clinician",
        scopes=["user/*.cruds"],
        issuer=gp.settings.auth_issuer,
        audience=gp.settings.auth_audience,
    )
    headers = {"Authorization": f"Bearer {reader}", "Content-Type": content_type}
    response = await gp.client.post(path, content=body, headers=headers)
    assert response.status_code == 403
    assert "feed" in response.json()["issue"][0]["diagnostics"]


@pytest.mark.parametrize(("path", "content_type", "body"), ENDPOINTS)
async def test_an_unregistered_feed_is_403(
    gp: Any, path: str, content_type: str, body: bytes
) -> None:
    kind = FeedKind.CSV if path == "/csv" else FeedKind.FHIR
    stranger = Feed(id="not-registered", kind=kind, ods="Y09999", setting="primary")
    response = await gp.client.post(
        path, content=body, headers=gp.headers(content_type, feed=stranger)
    )
    assert response.status_code == 403
    assert "not registered" in response.json()["issue"][0]["diagnostics"]
    assert gp.published == []


async def test_status_urls_need_the_feeds_token_too(gp: Any) -> None:
    response = await gp.client.get("/fhir/$import-status/whatever")
    assert response.status_code == 401
    missing = await gp.client.get("/fhir/$import-status/whatever", headers=gp.headers(None))
    assert missing.status_code == 404
