"""Where integration tests find PostgreSQL and Kafka (session-scoped fixtures).

Order of preference, for each of ``database_url`` and ``kafka_bootstrap``:

1. ``JOINEDUP_DATABASE_URL`` / ``JOINEDUP_KAFKA_BOOTSTRAP`` from the environment (``make test``
   exports them from ``.cache/infra.env``, written by ``make up``);
2. a throw-away container per test session (testcontainers) when a Docker engine answers;
3. otherwise the test fails and says how to get the infrastructure.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from functools import cache

import pytest


@cache
def docker_available() -> bool:
    """True when a Docker engine answers ``docker info`` (checked once per session)."""
    docker = shutil.which("docker")
    if docker is None:
        return False
    try:
        result = subprocess.run(  # noqa: S603 - fixed command, no shell
            [docker, "info"], capture_output=True, timeout=30, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return result.returncode == 0


def _from_env(name: str) -> str | None:
    value = os.environ.get(name, "").strip()
    return value or None


@pytest.fixture(scope="session")
def database_url() -> Iterator[str]:
    """SQLAlchemy async URL of a PostgreSQL database (``postgresql+asyncpg://...``)."""
    url = _from_env("JOINEDUP_DATABASE_URL")
    if url is not None:
        yield url
        return
    if not docker_available():
        pytest.fail(
            "integration test needs PostgreSQL, but there is no PostgreSQL: run `make up` "
            "(or set JOINEDUP_DATABASE_URL=postgresql+asyncpg://...), or start a Docker engine "
            "so that testcontainers can provide one. `make test` does all of this for you."
        )
    try:
        from testcontainers.community.postgres import PostgresContainer
    except ImportError:  # testcontainers < 4.14
        from testcontainers.postgres import PostgresContainer

    with PostgresContainer("postgres:16", driver="asyncpg") as postgres:
        yield postgres.get_connection_url()


@pytest.fixture(scope="session")
def kafka_bootstrap() -> Iterator[str]:
    """Bootstrap servers (``host:port``) of a single-node Kafka broker."""
    bootstrap = _from_env("JOINEDUP_KAFKA_BOOTSTRAP")
    if bootstrap is not None:
        yield bootstrap
        return
    if not docker_available():
        pytest.fail(
            "integration test needs Kafka, but there is no Kafka broker: run `make up` "
            "(or set JOINEDUP_KAFKA_BOOTSTRAP=host:port), or start a Docker engine so that "
            "testcontainers can provide one. `make test` does all of this for you."
        )
    try:
        from testcontainers.community.kafka import KafkaContainer
    except ImportError:  # testcontainers < 4.14
        from testcontainers.kafka import KafkaContainer

    kafka = (
        KafkaContainer("confluentinc/cp-kafka:7.6.0")
        .with_kraft()
        .with_env("KAFKA_NUM_PARTITIONS", "6")
        .with_env("KAFKA_AUTO_CREATE_TOPICS_ENABLE", "true")
        # a single broker: our transactional producer needs these at 1
        .with_env("KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR", "1")
        .with_env("KAFKA_TRANSACTION_STATE_LOG_MIN_ISR", "1")
        .with_env("KAFKA_MESSAGE_MAX_BYTES", "67108864")
    )
    with kafka:
        yield kafka.get_bootstrap_server()
