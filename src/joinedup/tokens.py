"""Tokens that embedded mode accepts, signed with its local key (never used in distributed
mode, where an external identity provider issues tokens and services only verify them)."""

from __future__ import annotations

from pathlib import Path

from fhir_common.auth import LocalSigner
from fhir_common.feeds import Feed
from fhir_common.settings import Settings

FEED_SCOPES = ["system/*.cu"]
DEFAULT_USER_SCOPES = ["user/*.rs"]


def _signer_and_settings(data_dir: Path) -> tuple[LocalSigner, Settings]:
    settings = Settings(data_dir=data_dir)
    return LocalSigner.load_or_create(settings.signing_key_file()), settings


def feed_token(data_dir: Path, feed: Feed, ttl_seconds: int = 30 * 24 * 3600) -> str:
    """A provider feed's push token: it may create and update, for that feed only."""
    signer, settings = _signer_and_settings(data_dir)
    return signer.mint(
        subject=f"feed:{feed.id}",
        scopes=FEED_SCOPES,
        issuer=settings.auth_issuer,
        audience=settings.auth_audience,
        ttl_seconds=ttl_seconds,
        org=feed.ods,
        feed=feed.id,
    )


def user_token(
    data_dir: Path,
    *,
    scopes: list[str] | None = None,
    role: str | None = None,
    org: str | None = None,
    practitioner: str | None = None,
    subject: str = "embedded-user",
    ttl_seconds: int = 8 * 3600,
) -> str:
    signer, settings = _signer_and_settings(data_dir)
    return signer.mint(
        subject=subject,
        scopes=scopes or DEFAULT_USER_SCOPES,
        issuer=settings.auth_issuer,
        audience=settings.auth_audience,
        ttl_seconds=ttl_seconds,
        org=org,
        role=role,
        practitioner=practitioner,
    )
