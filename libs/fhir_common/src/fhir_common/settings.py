"""Configuration shared by every service, read from the environment (prefix ``JOINEDUP_``).

Embedded mode (the default) needs no configuration at all: SQLite files and signing keys live
under ``data_dir`` and the in-process bus replaces Kafka. Distributed mode needs
``JOINEDUP_DATABASE_URL``, ``JOINEDUP_KAFKA_BOOTSTRAP`` and a way to verify tokens
(``JOINEDUP_AUTH_PUBLIC_KEY_FILE`` or ``JOINEDUP_AUTH_JWKS_URL``).
"""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Mode(StrEnum):
    EMBEDDED = "embedded"
    DISTRIBUTED = "distributed"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="JOINEDUP_", extra="ignore")

    mode: Mode = Mode.EMBEDDED
    data_dir: Path = Field(default=Path("var"), description="SQLite files, keys, feed registry")
    database_url: str | None = Field(
        default=None,
        description="SQLAlchemy async URL; default in embedded mode: SQLite under data_dir",
    )
    kafka_bootstrap: str | None = Field(
        default=None, description="Kafka bootstrap servers; required in distributed mode"
    )
    kafka_partitions: int = Field(default=6, description="partitions of topics we create")
    kafka_group_prefix: str = Field(
        default="", description="prefix of consumer group ids (several deployments, one cluster)"
    )
    instance_id: str | None = Field(
        default=None,
        description=(
            "this replica's name, for its Kafka transactional id: unique among live replicas "
            "of a service, stable across its restarts (e.g. a StatefulSet pod name); default: "
            "host name and the lowest slot free on the host (fhir_common.bus.identity)"
        ),
    )
    feeds_file: Path | None = Field(
        default=None, description="feed registry (JSON); default data_dir/feeds.json"
    )
    auth_issuer: str = "joinedup"
    auth_audience: str = "joinedup"
    auth_public_key_file: Path | None = Field(
        default=None, description="PEM public key that verifies bearer tokens"
    )
    auth_jwks_url: str | None = Field(default=None, description="JWKS URL of the token issuer")
    log_level: str = "INFO"
    log_json: bool = True
    auto_migrate: bool = Field(default=True, description="apply migrations at start-up")

    @property
    def embedded(self) -> bool:
        return self.mode is Mode.EMBEDDED

    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        if not self.embedded:
            raise ValueError("JOINEDUP_DATABASE_URL is required in distributed mode")
        return f"sqlite+aiosqlite:///{self.data_dir / 'joinedup.db'}"

    def resolved_feeds_file(self) -> Path:
        return self.feeds_file or self.data_dir / "feeds.json"

    def signing_key_file(self) -> Path:
        """Only embedded mode signs its own tokens; distributed mode only verifies them."""
        return self.data_dir / "keys" / "signing-key.pem"
