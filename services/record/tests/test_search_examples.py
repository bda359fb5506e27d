"""Every search parameter of every resource type the record indexes, over the API, on the
official FHIR R4 examples (SQLite and PostgreSQL).

For each (type, parameter) that some example has a value for, the first such example is found
by a search on that value (narrowed by ``_id``, so the answer is exactly that example) and is not
found by the same search on a value it does not have. The values come from the example's own
index rows, so this checks that what is indexed can be searched, parameter by parameter, for the
types the issue names (MedicationRequest, MedicationStatement, AllergyIntolerance, CarePlan,
CareTeam, Task, RiskAssessment, Communication, ...) as much as for Patient and Observation.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
import pytest_asyncio

from fhir_common.events import event_headers, fhir_message
from record.indexing import FAR_FUTURE, FAR_PAST, index_rows
from record.searchparams import REGISTRY

CORE = Path(__file__).resolve().parents[4] / "shared" / "samples" / "fhir-r4-core-examples"
# The parameters the issue names (for the types it lists without naming any: the patient and a
# token or two), each of which some example has a value for: every one must be a case below, so
# that a parameter whose values stopped being indexed fails here rather than silently dropping out.
REQUIRED = {
    "Patient": {"identifier", "name", "family", "birthdate", "gender", "general-practitioner"},
    "Encounter": {"subject", "date", "class", "status", "type", "reason-code", "service-provider"},
    "Condition": {"subject", "code", "clinical-status", "onset-date"},
    "Observation": {"subject", "code", "date", "value-quantity"},
    "MedicationRequest": {"subject", "code", "status"},
    "MedicationStatement": {"subject", "code", "status"},
    "AllergyIntolerance": {"patient", "code", "clinical-status"},
    "CarePlan": {"subject", "status"},
    "CareTeam": {"subject", "status"},
    "Task": {"subject", "status", "code"},
    "RiskAssessment": {"subject", "code", "status"},
    "Communication": {"subject", "status", "category"},
}


def examples() -> list[dict[str, Any]]:
    found = []
    for path in sorted(CORE.glob("*.json")):
        resource = json.loads(path.read_text())
        if resource.get("resourceType") in REGISTRY and resource.get("id"):
            found.append(resource)
    return found


def _escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace(",", "\\,").replace("|", "\\|").replace("$", "\\$")


def _instant(moment: datetime) -> str:
    return f"{moment:%Y-%m-%dT%H:%M:%S.%f}Z"


def _queries(column: str, row: tuple[Any, ...], kind: str) -> tuple[str, str] | None:
    """A search that finds a resource with this index row, and one that must not."""
    if kind == "tokens":
        _, system, code = row
        value = f"{_escape(system)}|{_escape(code)}"
        return f"{column}={value}", f"{column}={value}-no-such-code"
    if kind == "strings":
        exact = _escape(row[2])
        return f"{column}:exact={exact}", f"{column}:exact={exact}-no-such-text"
    if kind == "references":
        _, target_type, target_id = row
        return f"{column}={target_type}/{target_id}", f"{column}={target_type}/no-such-{target_id}"
    if kind == "quantities":
        value = row[1]
        return f"{column}={value!r}", f"{column}={value + 1000.5!r}"
    low, high = row[1], row[2]
    if low == FAR_PAST or high == FAR_FUTURE:
        return None  # open periods: covered by test_search's date cases
    found = f"{column}=ge{_instant(low)}&{column}=lt{_instant(high)}"
    return found, f"{column}=ge{_instant(high)}"


def cases() -> Iterator[tuple[str, str, str, str]]:
    """(type, id, query that finds it, query that does not): one per (type, parameter)."""
    seen: set[tuple[str, str]] = set()
    for resource in examples():
        rows = index_rows(resource)
        for kind in ("tokens", "strings", "dates", "references", "quantities"):
            for row in sorted(getattr(rows, kind), key=repr):
                column = row[0]
                key = (resource["resourceType"], column)
                if key in seen:
                    continue
                queries = _queries(column, row, kind)
                if queries is None:
                    continue
                seen.add(key)
                yield resource["resourceType"], resource["id"], *queries


CASES = list(cases())


def test_the_cases_cover_every_parameter_the_issue_names() -> None:
    covered = {(case[0], case[2].split("=")[0].split(":")[0]) for case in CASES}
    missing = {(t, p) for t, params in REQUIRED.items() for p in params} - covered
    assert not missing, sorted(missing)
    assert len(CASES) > 100  # parameters with a value in some example, over all types


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def stored(
    start_record: Any, store_url: str, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Any]:
    async with start_record(tmp_path_factory.mktemp("examples-app"), store_url) as record:
        headers = event_headers(source="gp-a", setting="primary")
        await record.publish(*(fhir_message(r, "examples", headers) for r in examples()))
        yield record


@pytest.mark.asyncio(loop_scope="module")
async def test_every_parameter_finds_its_example_and_nothing_else(stored: Any) -> None:
    wrong: list[str] = []
    for resource_type, rid, finds, misses in CASES:
        narrowed = f"&_id={rid}&_count=10"
        if await stored.ids(f"/fhir/{resource_type}?{quote(finds, safe='=&:|/')}{narrowed}") != [
            rid
        ]:
            wrong.append(f"{resource_type}?{finds} did not find {rid}")
        if await stored.ids(f"/fhir/{resource_type}?{quote(misses, safe='=&:|/')}{narrowed}"):
            wrong.append(f"{resource_type}?{misses} found {rid}")
    assert not wrong, "\n".join(wrong)
