"""Static checks of the deployment files: docker-compose.yml, deploy/Dockerfile, the local
Kafka POM and configuration, and the scripts behind `make up` / `make down`.

Nothing here needs Docker, PostgreSQL or Kafka; the files are parsed, not run.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
COMPOSE_FILE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "deploy" / "Dockerfile"
KAFKA_POM = ROOT / "deploy" / "kafka" / "pom.xml"
KAFKA_PROPERTIES = ROOT / "deploy" / "kafka" / "server.properties"

SERVICES = {
    "ingest-gp": 8001,
    "ingest-acute": 8002,
    "record": 8003,
    "risk": 8004,
    "careplan": 8005,
    "alerts": 8006,
}
MLLP_PORT = 2575


def compose() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE_FILE.read_text())
    assert isinstance(data, dict)
    return data


def services() -> dict[str, Any]:
    return compose()["services"]


def as_mapping(value: Any) -> dict[str, str]:
    """environment / build args: compose accepts a mapping or a list of KEY=VALUE."""
    if value is None:
        return {}
    if isinstance(value, dict):
        return {str(k): str(v) for k, v in value.items()}
    return dict(str(item).split("=", 1) for item in value)


def as_argv(command: Any) -> list[str]:
    return shlex.split(command) if isinstance(command, str) else [str(c) for c in command]


def published(service: dict[str, Any]) -> dict[int, int]:
    """container port -> host port, from short ("[ip:]host:container") or long syntax."""
    result: dict[int, int] = {}
    for port in service.get("ports", []):
        if isinstance(port, dict):
            result[int(port["target"])] = int(port["published"])
        else:
            parts = str(port).split("/")[0].split(":")
            assert len(parts) >= 2, f"port {port!r} is exposed but not published on the host"
            result[int(parts[-1])] = int(parts[-2])
    return result


def test_infrastructure_services_exist() -> None:
    defined = services()
    assert defined["postgres"]["image"].startswith("postgres:16")
    assert defined["kafka"]["image"] == "apache/kafka:3.9.1"
    assert published(defined["postgres"]) == {5432: 55432}
    assert published(defined["kafka"]) == {9092: 9092}


def test_every_joinedup_service_is_defined() -> None:
    assert set(SERVICES) <= set(services())


@pytest.mark.parametrize("name", sorted(SERVICES))
def test_service_builds_from_the_shared_dockerfile(name: str) -> None:
    build = services()[name]["build"]
    assert build["context"] in {".", "./"}
    assert Path(build["dockerfile"]) == Path("deploy/Dockerfile")
    assert as_mapping(build.get("args"))["SERVICE"] == name


@pytest.mark.parametrize(("name", "port"), sorted(SERVICES.items()))
def test_service_publishes_its_port_and_serves_itself(name: str, port: int) -> None:
    service = services()[name]
    assert published(service).get(port) == port
    argv = as_argv(service["command"])
    assert f"joinedup serve {name}" in " ".join(argv)
    assert argv[argv.index("--port") + 1] == str(port)
    assert argv[argv.index("--host") + 1] == "0.0.0.0"
    healthcheck = " ".join(as_argv(service["healthcheck"]["test"]))
    assert f"127.0.0.1:{port}/health" in healthcheck


def test_ingest_acute_publishes_mllp() -> None:
    assert published(services()["ingest-acute"]).get(MLLP_PORT) == MLLP_PORT


@pytest.mark.parametrize("name", sorted(SERVICES))
def test_service_depends_on_postgres_and_kafka(name: str) -> None:
    depends = services()[name]["depends_on"]
    assert {"postgres", "kafka"} <= set(depends)
    if isinstance(depends, dict):
        for dependency in ("postgres", "kafka"):
            assert depends[dependency]["condition"] == "service_healthy"
            assert "healthcheck" in services()[dependency]


@pytest.mark.parametrize("name", sorted(SERVICES))
def test_service_runs_distributed_against_the_compose_infrastructure(name: str) -> None:
    defined = services()
    env = as_mapping(defined[name].get("environment"))
    assert env["JOINEDUP_MODE"] == "distributed"
    assert env["JOINEDUP_DATABASE_URL"].startswith("postgresql+asyncpg://")
    assert "@postgres:5432/" in env["JOINEDUP_DATABASE_URL"]
    # The bootstrap must be a listener Kafka advertises to the other containers.
    kafka_env = as_mapping(defined["kafka"]["environment"])
    assert env["JOINEDUP_KAFKA_BOOTSTRAP"] in kafka_env["KAFKA_ADVERTISED_LISTENERS"]
    assert env["JOINEDUP_AUTH_PUBLIC_KEY_FILE"].startswith("/run/secrets/")


def test_kafka_advertises_the_host_listener_on_loopback() -> None:
    kafka_env = as_mapping(services()["kafka"]["environment"])
    assert "://127.0.0.1:9092" in kafka_env["KAFKA_ADVERTISED_LISTENERS"]
    assert kafka_env["KAFKA_PROCESS_ROLES"] == "broker,controller"
    assert kafka_env["KAFKA_NUM_PARTITIONS"] == "6"


def test_dockerfile_builds_the_service_named_by_its_build_arg() -> None:
    assert DOCKERFILE.is_file()
    text = DOCKERFILE.read_text()
    assert re.search(r"^FROM python:3\.11-slim\b", text, re.MULTILINE)
    assert re.search(r"^ARG SERVICE\b", text, re.MULTILINE)
    assert re.search(r"\$\{?SERVICE\}?", text.split("ARG SERVICE", 1)[1])
    assert "uv sync --frozen --no-dev" in text
    assert "uv run --no-sync joinedup serve" in text


def test_kafka_pom_pins_kafka_2_13() -> None:
    ns = {"m": "http://maven.apache.org/POM/4.0.0"}
    pom = ET.parse(KAFKA_POM).getroot()
    assert pom.findtext("m:packaging", namespaces=ns) == "pom"
    properties = pom.find("m:properties", ns)
    kafka_version = (
        properties.findtext("m:kafka.version", namespaces=ns) if properties is not None else None
    )
    (kafka,) = [
        d
        for d in pom.iterfind("m:dependencies/m:dependency", ns)
        if d.findtext("m:groupId", namespaces=ns) == "org.apache.kafka"
        and d.findtext("m:artifactId", namespaces=ns) == "kafka_2.13"
    ]
    version = kafka.findtext("m:version", namespaces=ns)
    assert version is not None
    assert version.replace("${kafka.version}", kafka_version or "") == "3.9.1"


def test_local_kafka_is_a_single_kraft_node() -> None:
    props = dict(
        line.split("=", 1)
        for line in KAFKA_PROPERTIES.read_text().splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    )
    assert props["process.roles"] == "broker,controller"
    assert props["node.id"] == "1"
    assert props["controller.quorum.voters"] == "1@127.0.0.1:9093"
    assert props["advertised.listeners"] == "PLAINTEXT://127.0.0.1:9092"
    assert props["auto.create.topics.enable"] == "true"
    assert props["num.partitions"] == "6"
    assert props["offsets.topic.replication.factor"] == "1"
    assert props["transaction.state.log.replication.factor"] == "1"
    assert props["transaction.state.log.min.isr"] == "1"
    assert props["group.initial.rebalance.delay.ms"] == "0"


@pytest.mark.parametrize(
    "script", ["deploy/local/up.sh", "deploy/local/down.sh", "deploy/local/lib.sh", ".ci/run"]
)
def test_scripts_are_valid_bash(script: str) -> None:
    path = ROOT / script
    subprocess.run(["bash", "-n", str(path)], check=True)
    if script != "deploy/local/lib.sh":
        assert os.access(path, os.X_OK), f"{script} is not executable"
        assert "set -euo pipefail" in path.read_text()


def test_local_infra_uses_the_host_ports_compose_publishes() -> None:
    up = (ROOT / "deploy" / "local" / "up.sh").read_text()
    lib = (ROOT / "deploy" / "local" / "lib.sh").read_text()
    assert "JOINEDUP_DATABASE_URL=postgresql+asyncpg://" in up
    assert "JOINEDUP_KAFKA_BOOTSTRAP=" in up
    assert 'PG_PORT="55432"' in lib
    assert 'KAFKA_PORT="9092"' in lib
