"""The fast structural check (ingest_gp.fastcheck) must never vouch for a resource the full
validator refuses: checked on every sample, and on many random mutations of them."""

from __future__ import annotations

import copy
import json
import random
from pathlib import Path
from typing import Any

import pytest

from fhir_common.validation import validate_resource
from ingest_gp.checks import check_resource
from ingest_gp.fastcheck import vouches_for
from ingest_gp.fhirxml import read_xml

SAMPLES = Path(__file__).resolve().parents[4] / "shared" / "samples"


def sample_resources() -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []
    for path in sorted((SAMPLES / "synthea-r4").glob("*.json"))[:4]:
        found += [e["resource"] for e in json.loads(path.read_text())["entry"]]
    for path in sorted((SAMPLES / "fhir-r4-core-examples").glob("*.json")):
        if path.name != "package.json":
            found.append(json.loads(path.read_text()))
    for path in sorted((SAMPLES / "uk-core-r4-examples").glob("*.xml")):
        found.append(read_xml(path.read_bytes()))
    return found


RESOURCES = sample_resources()

ODD_VALUES: list[Any] = [
    None,
    "",
    " ",
    "  x",
    "x  y",
    "a\u00a0b",
    "\u2028",
    "true",
    "yes",
    "5",
    "5.0",
    "-0",
    "1e400",
    0,
    -1,
    1,
    2**31,
    -(2**31) - 1,
    1.5,
    -0.0,
    float("1e300"),
    1e-7,
    True,
    False,
    [],
    {},
    [None],
    {"x": 1},
    ["a"],
    "2021-02-29",
    "2021-13-01",
    "2021-1-01",
    "2021-01-01T10:00:00",
    "2021-01-01T25:00:00Z",
    "2021-01-01T10:00:60Z",
    "2021-01-01T10:00:00.1234567Z",
    "2021-01-01T10:00:00+15:00",
    "2021",
    "2021-02",
    "10:61:00",
    "24:00:00",
    "10:00",
    "0000",
    "urn:uuid:0f1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d",
    "urn:oid:1.2.3",
    "http://a b",
    "not base64!",
    "QUJD",
    "QUJ",
    "#frag",
    "Patient/1",
    "a" * 65,
    "\t",
    "x\ny",
    "9434765918",
    "9434765919",
    "<div>x</div>",
    "<b>no</b>",
]


def _nodes(node: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [path]
    if isinstance(node, dict):
        for key, value in node.items():
            out += _nodes(value, (*path, key))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            out += _nodes(value, (*path, i))
    return out


def _get(node: Any, path: tuple[Any, ...]) -> Any:
    for step in path:
        node = node[step]
    return node


def odd(rng: random.Random) -> Any:
    return copy.deepcopy(rng.choice(ODD_VALUES))  # a fresh one: never shared between nodes


def mutate(resource: dict[str, Any], rng: random.Random) -> dict[str, Any]:
    copied = copy.deepcopy(resource)
    for _ in range(rng.choice((1, 1, 1, 2, 3))):
        paths = [p for p in _nodes(copied) if p]
        if not paths:
            break
        path = rng.choice(paths)
        parent = _get(copied, path[:-1])
        last = path[-1]
        action = rng.random()
        if action < 0.35:
            parent[last] = odd(rng)
        elif action < 0.5 and isinstance(parent, dict):
            del parent[last]
        elif action < 0.6 and isinstance(parent, dict):
            parent[
                rng.choice(
                    (
                        "extra",
                        "valueString",
                        "valueBoolean",
                        "_status",
                        "id",
                        "resourceType",
                        "fhir_comments",
                        "valueQuantity",
                    )
                )
            ] = odd(rng)
        elif action < 0.7:
            value = copy.deepcopy(parent[last])
            parent[last] = [value] if not isinstance(value, list) else (value[0] if value else {})
        elif action < 0.8 and isinstance(parent, dict) and isinstance(last, str):
            parent[f"_{last}"] = rng.choice(
                [
                    {"extension": [{"url": "http://x", "valueString": "y"}]},
                    {"id": "a"},
                    {},
                    [None],
                    [{"id": "b"}],
                    {"extension": []},
                ]
            )
        elif action < 0.9 and isinstance(parent, dict) and isinstance(last, str):
            twin = copy.deepcopy(parent[last])
            parent[last + rng.choice(("String", "Boolean", "DateTime", "x"))] = twin
        else:
            value = parent[last]
            if isinstance(value, str) and value:
                parent[last] = value[: rng.randrange(len(value))] + rng.choice(" -:T.Z+")
            elif isinstance(value, int | float) and not isinstance(value, bool):
                parent[last] = -value * 1000003
    return copied


def test_every_sample_the_check_vouches_for_is_valid() -> None:
    vouched = 0
    for resource in RESOURCES:
        if vouches_for(resource):
            vouched += 1
            assert validate_resource(resource) == [], resource.get("id")
    assert vouched >= 0.95 * len(RESOURCES)  # and it is useful: it vouches for nearly all


@pytest.mark.parametrize("seed", range(4))
def test_it_never_vouches_for_a_mutation_the_validator_refuses(seed: int) -> None:
    rng = random.Random(seed)
    vouched = 0
    for _ in range(2500):
        mutated = mutate(rng.choice(RESOURCES), rng)
        if vouches_for(mutated):
            vouched += 1
            issues = validate_resource(mutated)
            assert issues == [], (json.dumps(mutated)[:3000], issues)
    assert vouched > 100  # mutations that stay valid are vouched for too


def test_check_resource_reports_what_the_validator_reports() -> None:
    bad = {"resourceType": "Patient", "birthDate": "1974-13-45"}
    assert not vouches_for(bad)
    assert [i.expression for i in check_resource(bad)] == [("Patient.birthDate",)]
    odd_ods = {
        "resourceType": "Organization",
        "identifier": [
            {"system": "https://fhir.nhs.uk/Id/ods-organization-code", "value": " rr8 "}
        ],
    }
    assert check_resource(odd_ods) == []
    assert odd_ods["identifier"][0]["value"] == "RR8"
    wrong = {
        "resourceType": "Organization",
        "identifier": [{"system": "https://fhir.nhs.uk/Id/ods-organization-code", "value": "Y-1"}],
    }
    assert [i.expression for i in check_resource(wrong)] == [("Organization.identifier[0].value",)]
