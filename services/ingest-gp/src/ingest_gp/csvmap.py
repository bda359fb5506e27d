"""Declarative mappings of CSV extracts to FHIR R4, one YAML file per feed, checked when loaded.

A mapping names the resource each row becomes, which column identifies it, where the patient's
details are, and where every other column goes::

    feed: community-zc1                   # the feed it belongs to (must match)
    provider: {ods: ZC1, setting: community}   # optional; must match the feed registry
    format:                               # all optional; these are the defaults
      delimiter: ","
      quote: '"'
      encoding: utf-8
      header: true                        # a header row is required
      timezone: Europe/London             # local times in the extract are in this zone
    resource: Encounter                   # what each row becomes (an R4 resource type)
    patient_element: subject              # optional: where the row's resource names its patient
    row_id: {column: Contact ID}          # its identity in the provider's system
    patient:                              # the patient each row is about (a Patient resource)
      nhs_number: {column: NHS Number, remove: [" "]}   # invalid: reject (default) | drop
      local_id: {column: Local Patient ID, system: https://.../patient-id}
      family: {column: Surname}
      given: {column: Forename}
      birth_date: {column: Date of Birth, format: "%d/%m/%Y"}
      gender: {column: Gender, map: {Male: male, Female: female}}
      address_postcode: {column: Postcode}
      general_practitioner: {column: Registered GP Practice}   # an ODS code
      elements: [...]                     # optional, as below, with Patient.* paths
    elements:
      - path: Encounter.period.start      # a FHIRPath-like path: elements, [n] for a list
        columns: [Contact Date, Contact Time]   # joined by a space (separator: to change)
        format: "%d/%m/%Y %H:%M"          # strptime format for date, dateTime, instant, time
      - path: Encounter.status
        column: Attendance
        map: {Attended: finished, DNA: cancelled}   # code translations; unmapped is an error
      - path: Encounter.class             # a Coding: the value becomes its code
        column: Contact Type
        system: http://terminology.hl7.org/CodeSystem/v3-ActCode
      - path: Encounter.extension[cpa].valueBoolean   # an extension, by url
        url: https://.../care-programme-approach
        column: CPA
        map: {Y: true, N: false}
      - path: Encounter.serviceProvider.identifier
        value: ZC1                        # a constant instead of a column
        system: https://fhir.nhs.uk/Id/ods-organization-code

Every element entry takes exactly one of ``column``, ``columns`` or ``value``, and optionally
``map``, ``default`` (for values the map lacks), ``format``, ``system``, ``url``, ``remove``
(substrings taken out first), ``separator`` and ``required`` (a blank is an error; otherwise a
blank cell leaves the element out). ``note``, ``description``, ``often_blank`` and
``code_system`` are for people and ignored, as are the ``extract`` and ``provider.name``
sections. The target's FHIR type decides the conversion: strings and codes as they are;
booleans, integers and decimals typed; dates and times through ``format``; a ``Coding`` or
``CodeableConcept`` gets ``system`` and the value as its code (or, without a system, a
CodeableConcept gets it as text); an ``Identifier`` or a ``Reference`` (by identifier) gets
``system`` and the value.

Loading checks all of it against the FHIR R4 definitions (``fhirschema``) and reports every
problem at once, each naming where it is (``elements[3].path: Encounter has no element
'foo'``), so a broken mapping is a clear error, not a surprise on the first row.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import yaml

from fhir_common.feeds import Feed
from fhir_common.identifiers import NHS_NUMBER_SYSTEM, ODS_ORGANIZATION_SYSTEM
from ingest_gp import fhirschema

TOP_KEYS = frozenset(
    {
        "feed",
        "provider",
        "format",
        "extract",
        "resource",
        "row_id",
        "patient",
        "elements",
        "patient_element",
        "description",
        "note",
    }
)
FORMAT_KEYS = frozenset(
    {"type", "delimiter", "quote", "encoding", "header", "line_terminator", "timezone"}
)
SOURCE_KEYS = frozenset(
    {
        "column",
        "columns",
        "value",
        "map",
        "default",
        "format",
        "system",
        "url",
        "remove",
        "separator",
        "required",
        "invalid",
        "path",
    }
)
NOTE_KEYS = frozenset({"note", "description", "often_blank", "code_system", "display"})
DATE_TYPES = frozenset({"date", "dateTime", "instant", "time"})
TEXT_TYPES = frozenset(
    {"string", "code", "id", "uri", "url", "canonical", "markdown", "oid", "uuid"}
)
NUMBER_TYPES = frozenset({"integer", "unsignedInt", "positiveInt", "decimal", "integer64"})
SYSTEM_TYPES = frozenset({"Coding", "CodeableConcept", "Identifier", "Reference"})
PATIENT_FIELDS: dict[str, str] = {
    "nhs_number": "Patient.identifier",
    "local_id": "Patient.identifier",
    "family": "Patient.name.family",
    "given": "Patient.name.given",
    "birth_date": "Patient.birthDate",
    "gender": "Patient.gender",
    "address_postcode": "Patient.address.postalCode",
    "general_practitioner": "Patient.generalPractitioner.identifier",
}
_STEP = re.compile(r"([A-Za-z][A-Za-z0-9]*)(?:\[([^\]]+)\])?")


class MappingError(ValueError):
    """A mapping file that cannot be used; ``problems`` says every reason, each located."""

    def __init__(self, source: str, problems: list[str]) -> None:
        self.source = source
        self.problems = problems
        super().__init__(f"mapping {source} is not usable: " + "; ".join(problems))


@dataclass(frozen=True)
class Step:
    name: str
    index: int | None  # [n]
    label: str | None  # extension[label]
    element: fhirschema.Element


@dataclass(frozen=True)
class Target:
    """A mapped element: the path's steps (the first is the resource type) and its type."""

    path: str
    steps: tuple[Step, ...]

    @property
    def leaf(self) -> fhirschema.Element:
        return self.steps[-1].element


@dataclass(frozen=True)
class Source:
    """Where a value comes from and how it is turned into the target's type."""

    where: str  # "elements[3]" or "patient.birth_date", for messages
    target: Target
    columns: tuple[str, ...] = ()
    value: Any = None
    separator: str = " "
    remove: tuple[str, ...] = ()
    map: Mapping[str, Any] | None = None
    default: Any = None
    format: str | None = None
    system: str | None = None
    url: str | None = None
    required: bool = False
    invalid: str = "reject"  # NHS numbers: reject | drop

    @property
    def column_text(self) -> str:
        if not self.columns:
            return "a constant"
        return "column " + " + ".join(repr(c) for c in self.columns)


@dataclass(frozen=True)
class CsvFormat:
    delimiter: str = ","
    quote: str = '"'
    encoding: str = "utf-8"
    timezone: ZoneInfo = field(default_factory=lambda: ZoneInfo("Europe/London"))


@dataclass(frozen=True)
class CsvMapping:
    """A checked mapping, ready to turn rows into resources."""

    feed: str
    source: str
    resource: str
    patient_element: str
    row_id: Source
    format: CsvFormat
    elements: tuple[Source, ...]
    patient: dict[str, Source]
    patient_elements: tuple[Source, ...]
    provider_ods: str | None
    provider_setting: str | None

    def columns(self) -> set[str]:
        sources = [self.row_id, *self.elements, *self.patient.values(), *self.patient_elements]
        return {c for s in sources for c in s.columns}

    def check_feed(self, feed: Feed) -> list[str]:
        """Where the mapping disagrees with the feed registry."""
        problems = []
        if self.feed != feed.id:
            problems.append(f"feed: {self.feed!r} is not the feed pushing ({feed.id!r})")
        if self.provider_ods is not None and self.provider_ods != feed.ods:
            problems.append(
                f"provider.ods: {self.provider_ods!r} is not the feed's ODS code ({feed.ods!r})"
            )
        if self.provider_setting is not None and self.provider_setting != feed.setting:
            problems.append(
                f"provider.setting: {self.provider_setting!r} is not the feed's setting "
                f"({feed.setting!r})"
            )
        return problems


# --- loading -------------------------------------------------------------------------------------


def load_file(path: Path) -> CsvMapping:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise MappingError(str(path), [f"cannot be read: {exc.strerror or exc}"]) from exc
    return load_text(text, str(path))


def load_text(text: str, source: str) -> CsvMapping:
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise MappingError(source, [f"{where}not valid YAML ({problem})"]) from exc
    return check(data, source)


def check(data: Any, source: str) -> CsvMapping:
    """The checked mapping, or a MappingError listing every problem."""
    problems: list[str] = []
    if not isinstance(data, dict):
        raise MappingError(
            source, ["the file must hold a mapping (key: value), not a list or text"]
        )
    for key in sorted(set(data) - TOP_KEYS):
        problems.append(f"{key}: not a mapping key (known: {', '.join(sorted(TOP_KEYS))})")
    feed = data.get("feed")
    if not isinstance(feed, str) or not feed:
        problems.append("feed: required, the id of the feed whose extracts this maps")
    resource = data.get("resource")
    if not isinstance(resource, str) or not fhirschema.is_resource_type(resource):
        problems.append(f"resource: {resource!r} is not a FHIR R4 resource type")
        resource = None
    csv_format = _format(data.get("format"), problems)
    provider = data.get("provider") or {}
    if not isinstance(provider, dict):
        problems.append("provider: must be a mapping (ods, name, setting)")
        provider = {}
    patient_element = _patient_element(data.get("patient_element"), resource, problems)
    row_id = _row_id(data.get("row_id"), resource, problems)
    elements = _elements(data.get("elements"), "elements", resource, problems)
    patient, patient_elements = _patient(data.get("patient"), problems)
    if problems or resource is None or row_id is None or patient_element is None:
        raise MappingError(source, problems or ["incomplete"])
    return CsvMapping(
        feed=str(feed),
        source=source,
        resource=resource,
        patient_element=patient_element,
        row_id=row_id,
        format=csv_format,
        elements=tuple(elements),
        patient=patient,
        patient_elements=tuple(patient_elements),
        provider_ods=str(provider["ods"]) if provider.get("ods") is not None else None,
        provider_setting=str(provider["setting"]) if provider.get("setting") else None,
    )


def _format(data: Any, problems: list[str]) -> CsvFormat:
    if data is None:
        return CsvFormat()
    if not isinstance(data, dict):
        problems.append("format: must be a mapping")
        return CsvFormat()
    for key in sorted(set(data) - FORMAT_KEYS):
        problems.append(f"format.{key}: not a format key (known: {', '.join(sorted(FORMAT_KEYS))})")
    if data.get("type", "csv") != "csv":
        problems.append(f"format.type: {data.get('type')!r}; only csv is read")
    if data.get("header", True) is not True:
        problems.append("format.header: extracts must start with a header row (true)")
    delimiter = data.get("delimiter", ",")
    quote = data.get("quote", '"')
    for name, value in (("delimiter", delimiter), ("quote", quote)):
        if not isinstance(value, str) or len(value) != 1:
            problems.append(f"format.{name}: must be one character, not {value!r}")
    encoding = data.get("encoding", "utf-8")
    try:
        "".encode(encoding)
    except (LookupError, TypeError):
        problems.append(f"format.encoding: {encoding!r} is not a known text encoding")
        encoding = "utf-8"
    zone_name = data.get("timezone", "Europe/London")
    try:
        zone = ZoneInfo(str(zone_name))
    except (ZoneInfoNotFoundError, ValueError):
        problems.append(f"format.timezone: {zone_name!r} is not a known time zone")
        zone = ZoneInfo("Europe/London")
    ok = (
        isinstance(delimiter, str)
        and len(delimiter) == 1
        and isinstance(quote, str)
        and len(quote) == 1
    )
    return CsvFormat(
        delimiter=delimiter if ok else ",",
        quote=quote if ok else '"',
        encoding=str(encoding),
        timezone=zone,
    )


def _patient_element(name: Any, resource: str | None, problems: list[str]) -> str | None:
    if resource is None:
        return None
    info = fhirschema.type_info(resource)
    candidates = [name] if name is not None else ["subject", "patient"]
    for candidate in candidates:
        element = info.elements.get(str(candidate))
        if element is not None and element.type == "Reference" and not element.is_list:
            return str(candidate)
    if name is not None:
        problems.append(f"patient_element: {resource}.{name} is not a single Reference")
    else:
        problems.append(
            f"patient_element: {resource} has neither subject nor patient; name the element "
            "that refers to the patient"
        )
    return None


def _row_id(data: Any, resource: str | None, problems: list[str]) -> Source | None:
    if not isinstance(data, dict):
        problems.append("row_id: required, e.g. {column: <the column that identifies a row>}")
        return None
    if resource is None:
        return None
    target = Target(f"{resource}.id", (_resource_step(resource), _step(resource, "id")))
    return _source(data, "row_id", target, problems, allow_path=False)


def _resource_step(resource: str) -> Step:
    element = fhirschema.Element(resource, False, "complex", resource, True, None, False)
    return Step(resource, None, None, element)


def _step(type_name: str, name: str) -> Step:
    element = fhirschema.element(type_name, name)
    assert element is not None
    return Step(name, None, None, element)


def _elements(data: Any, where: str, resource: str | None, problems: list[str]) -> list[Source]:
    if data is None:
        return []
    if not isinstance(data, list):
        problems.append(f"{where}: must be a list of elements")
        return []
    out: list[Source] = []
    for i, item in enumerate(data):
        here = f"{where}[{i}]"
        if not isinstance(item, dict):
            problems.append(f"{here}: must be a mapping with a path")
            continue
        path = item.get("path")
        if not isinstance(path, str):
            problems.append(f"{here}.path: required, e.g. {resource or 'Encounter'}.status")
            continue
        target = parse_path(path, resource, f"{here}.path", problems)
        if target is None:
            continue
        source = _source(item, here, target, problems)
        if source is not None:
            out.append(source)
    return out


def parse_path(path: str, resource: str | None, where: str, problems: list[str]) -> Target | None:
    head, _, rest = path.partition(".")
    if resource is not None and head != resource:
        problems.append(f"{where}: {path!r} must start with {resource}")
        return None
    if not rest or not fhirschema.is_resource_type(head):
        problems.append(f"{where}: {path!r} is not <ResourceType>.<element>...")
        return None
    steps = [_resource_step(head)]
    type_name = head
    for text in rest.split("."):
        match = _STEP.fullmatch(text)
        if match is None:
            problems.append(f"{where}: {text!r} in {path!r} is not an element name")
            return None
        name, bracket = match.group(1), match.group(2)
        try:
            element = fhirschema.element(type_name, name)
        except KeyError:
            element = None
        if element is None:
            problems.append(f"{where}: {type_name} has no element {name!r} (in {path!r})")
            return None
        index: int | None = None
        label: str | None = None
        if bracket is not None:
            if not element.is_list:
                problems.append(f"{where}: {type_name}.{name} does not repeat; drop [{bracket}]")
                return None
            if bracket.isdigit():
                index = int(bracket)
            elif element.type == "Extension":
                label = bracket
            else:
                problems.append(f"{where}: [{bracket}] needs a number (or an extension label)")
                return None
        steps.append(Step(name, index, label, element))
        if element.kind == "resource":
            problems.append(f"{where}: {path!r} goes into a nested resource")
            return None
        type_name = element.type
    target = Target(path, tuple(steps))
    if target.leaf.kind == "complex" and target.leaf.type not in SYSTEM_TYPES:
        problems.append(
            f"{where}: {path!r} is a {target.leaf.type}; map a column to one of its "
            "elements instead"
        )
        return None
    return target


def _source(
    data: dict[str, Any], where: str, target: Target, problems: list[str], allow_path: bool = True
) -> Source | None:
    before = len(problems)
    known = SOURCE_KEYS | NOTE_KEYS
    for key in sorted(set(data) - known):
        problems.append(f"{where}.{key}: not understood (known: {', '.join(sorted(known))})")
    if not allow_path and "path" in data:
        problems.append(f"{where}.path: not taken here")
    given = [k for k in ("column", "columns", "value") if k in data]
    if len(given) != 1:
        problems.append(
            f"{where}: needs exactly one of column, columns or value (has {given or 'none'})"
        )
    columns: tuple[str, ...] = ()
    if "column" in data:
        if not isinstance(data["column"], str) or not data["column"]:
            problems.append(f"{where}.column: must be a column name")
        else:
            columns = (data["column"],)
    if "columns" in data:
        names = data["columns"]
        if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
            problems.append(f"{where}.columns: must be a list of column names")
        else:
            columns = tuple(names)
    leaf = target.leaf
    value_map = data.get("map")
    if value_map is not None and not isinstance(value_map, dict):
        problems.append(f"{where}.map: must map values as sent to values in FHIR")
        value_map = None
    if value_map is not None:
        value_map = {str(k): v for k, v in value_map.items()}
        for key, value in value_map.items():
            problem = _fits(value, leaf)
            if problem:
                problems.append(f"{where}.map[{key!r}]: {problem}")
    fmt = data.get("format")
    if fmt is not None:
        if leaf.type not in DATE_TYPES:
            problems.append(f"{where}.format: {target.path} is a {leaf.type}, not a date or time")
        elif not isinstance(fmt, str) or not _format_works(fmt):
            problems.append(f"{where}.format: {fmt!r} is not a strptime format")
    system = data.get("system")
    if system is not None and (leaf.kind != "complex" or leaf.type not in SYSTEM_TYPES):
        problems.append(
            f"{where}.system: {target.path} is a {leaf.type}; system is for codings and identifiers"
        )
    if leaf.type == "Reference" and system is None and where != "row_id":
        problems.append(f"{where}.system: a Reference is filled by identifier; give its system")
    url = data.get("url")
    needs_url = any(s.label is not None for s in target.steps)
    if needs_url and not isinstance(url, str):
        problems.append(f"{where}.url: {target.path} names an extension; give its url")
    if url is not None and not needs_url:
        problems.append(f"{where}.url: only for extension[label] paths")
    remove = data.get("remove", [])
    if not isinstance(remove, list) or not all(isinstance(r, str) and r for r in remove):
        problems.append(f"{where}.remove: must be a list of texts to take out")
        remove = []
    invalid = data.get("invalid", "reject")
    if invalid not in ("reject", "drop"):
        problems.append(f"{where}.invalid: {invalid!r}; reject or drop")
    if "value" in data:
        problem = _fits(data["value"], leaf) if leaf.kind == "primitive" and fmt is None else None
        if problem:
            problems.append(f"{where}.value: {problem}")
    if len(problems) > before:
        return None
    return Source(
        where=where,
        target=target,
        columns=columns,
        value=data.get("value"),
        separator=str(data.get("separator", " ")),
        remove=tuple(remove),
        map=value_map,
        default=data.get("default"),
        format=fmt,
        system=str(system) if system is not None else None,
        url=str(url) if url is not None else None,
        required=bool(data.get("required", False)),
        invalid=str(invalid),
    )


def _fits(value: Any, leaf: fhirschema.Element) -> str | None:
    """Why a mapped value cannot be the leaf's value, or None if it can."""
    if leaf.type == "boolean":
        return None if isinstance(value, bool) else f"{value!r} is not true or false"
    if leaf.type in NUMBER_TYPES:
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        return None if ok else f"{value!r} is not a number"
    if leaf.kind == "primitive" or leaf.type in SYSTEM_TYPES:
        return (
            None
            if isinstance(value, str | int | float) and not isinstance(value, bool)
            else (f"{value!r} is not text")
        )
    return None


def _format_works(fmt: str) -> bool:
    sample = datetime(2001, 2, 3, 4, 5, 6)
    try:
        return datetime.strptime(sample.strftime(fmt), fmt) is not None
    except ValueError:
        return False


def _patient(data: Any, problems: list[str]) -> tuple[dict[str, Source], list[Source]]:
    if not isinstance(data, dict):
        problems.append("patient: required, at least local_id or nhs_number")
        return {}, []
    fields: dict[str, Source] = {}
    for key in sorted(set(data) - set(PATIENT_FIELDS) - {"elements"}):
        problems.append(
            f"patient.{key}: not a patient field "
            f"(known: {', '.join(sorted(PATIENT_FIELDS))}, elements)"
        )
    for name, path in PATIENT_FIELDS.items():
        if name not in data:
            continue
        entry = data[name]
        where = f"patient.{name}"
        if not isinstance(entry, dict):
            problems.append(f"{where}: must be a mapping, e.g. {{column: ...}}")
            continue
        target = parse_path(path, "Patient", where, problems)
        if target is None:
            continue
        entry = dict(entry)
        if name == "nhs_number":
            system = entry.get("system", NHS_NUMBER_SYSTEM)
            if system != NHS_NUMBER_SYSTEM:
                problems.append(f"{where}.system: NHS numbers are {NHS_NUMBER_SYSTEM}")
            entry["system"] = NHS_NUMBER_SYSTEM
        elif name == "local_id" and "system" not in entry:
            problems.append(f"{where}.system: the provider's identifier system is required")
        elif name == "general_practitioner":
            entry.setdefault("system", ODS_ORGANIZATION_SYSTEM)
        if name != "nhs_number" and "invalid" in entry:
            problems.append(f"{where}.invalid: only for nhs_number")
        source = _source(entry, where, target, problems)
        if source is not None:
            fields[name] = source
    if "local_id" not in data and "nhs_number" not in data:
        problems.append("patient: needs local_id (or at least nhs_number) to identify the patient")
    elements = _elements(data.get("elements"), "patient.elements", "Patient", problems)
    return fields, elements


def main(argv: list[str]) -> int:
    """``python -m ingest_gp.csvmap FILE...``: check mapping files, say what is wrong."""
    status = 0
    for name in argv:
        try:
            mapping = load_file(Path(name))
        except MappingError as error:
            status = 1
            print(f"{name}: not usable")
            for problem in error.problems:
                print(f"  - {problem}")
        else:
            print(f"{name}: ok ({mapping.feed}: rows become {mapping.resource})")
    return status


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
