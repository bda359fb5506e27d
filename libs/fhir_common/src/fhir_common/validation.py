"""FHIR R4 parsing and validation at the edge, with every problem reported where it is.

Validation is expensive (fhir.resources with pydantic manages a few thousand resources a second
per core, DESIGN.md "Budgets"), so JoinedUp validates once, where data enters (ingest endpoints,
the careplan write side), and never again: topics carry resources that passed here, and every
downstream consumer reads them with plain ``orjson.loads``, not with these models.

Models are fhir.resources' R4B package (FHIR 4.3, the R4 line; its default package is R5). A
resource type is accepted when R4B has a model for it; R4-only resources that R4B dropped
(MedicinalProduct*, SubstanceSpecification, EffectEvidenceSynthesis, ...) are therefore refused.

Every problem becomes an ``Issue`` whose ``expression`` is a FHIRPath-like location such as
``Patient.birthDate`` or ``Bundle.entry[2].resource.name[0].given[1]``:

- pydantic ``loc`` tuples are turned into paths; a primitive's ``_element`` sibling is reported as
  the element itself (``_given[1].extension`` -> ``given[1].extension``), as FHIRPath sees it;
- a choice element given twice (``deceasedBoolean`` and ``deceasedDateTime``) is reported at
  ``deceased``; unknown elements at their own name;
- nested resources (``contained``, ``Bundle.entry.resource``, ``Parameters.parameter.resource``)
  of a type R4B does not know are reported at the resource, before the model sees them;
- identifiers in the NHS number system (any depth: ``Patient.identifier``,
  ``Encounter.subject.identifier``, ``valueIdentifier``) must hold a valid NHS number, written as
  10 digits without spaces.

What fhir.resources does not check is not checked here either: FHIR invariants, terminology
bindings (``gender: "bogus"`` passes), JSON primitive types where pydantic coerces (``"active":
"yes"`` is read as true), empty arrays/objects and the XHTML of ``Narrative.div``.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from copy import deepcopy
from functools import lru_cache
from typing import Any

import orjson
from fhir.resources.R4B import get_fhir_model_class
from fhir.resources.R4B.resource import Resource
from pydantic import ValidationError
from pydantic_core import ErrorDetails

from fhir_common.errors import FhirError, Issue
from fhir_common.identifiers import NHS_NUMBER_SYSTEM, is_valid_nhs_number

_UTF8_BOM = b"\xef\xbb\xbf"
_RESOURCE_TYPE = re.compile(r"[A-Z][A-Za-z]{1,63}")
_ABSTRACT_TYPES = frozenset({"Resource", "DomainResource"})
_QUOTED_NAME = re.compile(r"'([A-Za-z0-9_]+)'")

# pydantic / fhir.resources error type -> OperationOutcome issue type; anything else is "value".
_ISSUE_CODES = {
    "extra_forbidden": "structure",
    "missing": "required",
    "model_field_validation.missing": "required",
    "list_type": "structure",
    "dict_type": "structure",
    "model_type": "structure",
    "model_attributes_type": "structure",
    "model_validation_format": "structure",
    "fhir-validation-wrong-resource-type": "structure",
    "json_invalid": "structure",
}

Segment = str | int
Loc = tuple[int | str, ...]
_MAX_PASSES = 4
_MISSING = frozenset({"missing", "model_field_validation.missing"})


# --- public API -------------------------------------------------------------------------------


def parse_json(body: bytes | str) -> Any:
    """Parse a JSON body with orjson; malformed JSON is a 400 "structure" FhirError.

    A leading UTF-8 byte order mark is ignored (RFC 8259 allows parsers to).
    """
    if isinstance(body, bytes | bytearray | memoryview):
        body = bytes(body)
        if body.startswith(_UTF8_BOM):
            body = body[len(_UTF8_BOM) :]
    elif body.startswith("\ufeff"):
        body = body[1:]
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        where = f"line {exc.lineno}, column {exc.colno} (char {exc.pos})"
        raise FhirError.single(400, "structure", f"Malformed JSON at {where}: {exc.msg}") from exc


def validate_resource(data: Any, path: str | None = None) -> list[Issue]:
    """Every problem of one FHIR R4 resource (a parsed JSON object); [] when it is valid.

    ``path`` is the location of the resource inside something larger (``Bundle.entry[2].resource``)
    and prefixes every expression instead of the resource type.
    """
    return _check(data, path)[1]


def parse_resource(data: dict[str, Any] | bytes | str, path: str | None = None) -> Resource:
    """The validated R4B model of a resource given as JSON bytes/str or as a parsed dict.

    Raises FhirError 400 for malformed JSON or a body that is not a JSON object, and 422 with every
    issue when the resource is invalid.
    """
    parsed = parse_json(data) if isinstance(data, bytes | str) else data
    if not isinstance(parsed, dict):
        raise FhirError.single(400, "structure", "A FHIR resource must be a JSON object")
    model, issues = _check(parsed, path)
    if issues or model is None:
        raise FhirError(422, issues)
    return model


def validate_bundle_entries(bundle: Any) -> list[Issue]:
    """Every problem of a Bundle: its shell, then each ``entry[i].resource`` on its own.

    Each resource is validated separately (at ``Bundle.entry[i].resource``) rather than through
    the Bundle model, so that every entry's issues are reported with their exact entry, all
    entries are checked whatever the others hold, and no resource is validated twice.
    """
    if not isinstance(bundle, dict):
        return [_issue("structure", "A Bundle must be a JSON object", None)]
    if bundle.get("resourceType") != "Bundle":
        found = bundle.get("resourceType")
        return [_issue("invalid", f"Expected a Bundle, got resourceType {found!r}", "resourceType")]
    entries = bundle.get("entry")
    if entries is not None and not isinstance(entries, list):
        shell = {k: v for k, v in bundle.items() if k != "entry"}
        entry_issue = _issue("structure", "Bundle.entry must be an array", "Bundle.entry")
        return [*validate_resource(shell), entry_issue]
    entries = entries or []
    issues = validate_resource(_bundle_shell(bundle, entries))
    for i, entry in enumerate(entries):
        if isinstance(entry, dict) and "resource" in entry:
            issues.extend(validate_resource(entry["resource"], f"Bundle.entry[{i}].resource"))
    return issues


# --- one resource -----------------------------------------------------------------------------


def _check(data: Any, path: str | None) -> tuple[Resource | None, list[Issue]]:
    """Validate one resource: its type, then the model, then the NHS numbers in it."""
    type_issue = _resource_type_issue(data, path)
    if type_issue is not None:
        return None, [type_issue]
    prefix = path or data["resourceType"]
    scan_issues, unknown_nested = _scan(data, prefix)
    if unknown_nested:
        # fhir.resources raises KeyError on nested resources of unknown type: do not call it.
        return None, scan_issues
    model_class = _resource_class(data["resourceType"])
    assert model_class is not None
    try:
        model, model_issues = _validate_model(model_class, data, prefix)
    except (KeyError, TypeError, AttributeError) as exc:  # fhir.resources' own bugs
        failure = _issue("exception", f"{prefix}: could not be validated ({exc!r})", prefix)
        return None, [failure, *scan_issues]
    issues = model_issues + scan_issues
    return (None if issues else model), issues


def _validate_model(model_class: Any, data: dict[str, Any], prefix: str) -> tuple[Any, list[Issue]]:
    """Validate with the model; on failure, prune what failed and go again to find the rest.

    pydantic runs a model's "after" validators, where fhir.resources checks required primitives
    (``status``) and choice elements, only when all of the model's fields validated. So a
    resource with an unknown element would never be told that its status is missing. Each further
    pass removes the elements already reported and validates again, up to ``_MAX_PASSES``.
    """
    issues: list[Issue] = []
    seen: set[tuple[str, Loc]] = set()
    pruned: set[Loc] = set()
    current = data
    for _ in range(_MAX_PASSES):
        try:
            return model_class.model_validate(current), issues
        except ValidationError as exc:
            errors = exc.errors(include_url=False, include_context=False)
        fresh = [e for e in errors if (e["type"], e["loc"]) not in seen]
        fresh = [e for e in fresh if not _caused_by_pruning(e, pruned)]
        seen.update((e["type"], e["loc"]) for e in errors)
        issues += [_issue_of(e, prefix, current) for e in fresh]
        cuts = {cut for e in errors if (cut := _prune_target(e))} - pruned
        if not cuts:
            break
        pruned |= cuts
        current = _without(data, pruned)
    return None, issues


def _resource_type_issue(data: Any, path: str | None) -> Issue | None:
    where = path or "resource"
    if not isinstance(data, dict):
        return _issue("structure", f"{where}: a resource must be a JSON object", path)
    resource_type = data.get("resourceType")
    if resource_type is None:
        expression = f"{path}.resourceType" if path else "resourceType"
        return _issue("required", f"{where}: resourceType is missing", expression)
    if not isinstance(resource_type, str) or _resource_class(resource_type) is None:
        expression = f"{path}.resourceType" if path else "resourceType"
        diagnostics = f"{where}: resourceType {resource_type!r} is not a FHIR R4 resource type"
        return _issue("not-supported", diagnostics, expression)
    return None


@lru_cache(maxsize=512)
def _resource_class(resource_type: str) -> Any:
    """The R4B model class of a concrete resource type, or None."""
    if not _RESOURCE_TYPE.fullmatch(resource_type) or resource_type in _ABSTRACT_TYPES:
        return None
    try:
        model_class = get_fhir_model_class(resource_type)
    except ValueError:
        return None
    return model_class if model_class.has_resource_base() else None


def _issue(code: str, diagnostics: str, location: str | None) -> Issue:
    return Issue(code=code, diagnostics=diagnostics, expression=(location,) if location else ())


# --- further passes: prune what failed -----------------------------------------------------------


def _is_choice_error(err: ErrorDetails) -> bool:
    return "from this list" in err["msg"] and "field value" in err["msg"]


def _prune_target(err: ErrorDetails) -> Loc:
    """The element to remove so that the error's model can pass: a dict key path (no indices)."""
    loc = _strip_root(err["loc"])
    if err["type"] in _MISSING and not _is_choice_error(err):
        loc = loc[:-1]  # remove the element that lacks the required child
    while loc and isinstance(loc[-1], int):
        loc = loc[:-1]
    return loc


def _caused_by_pruning(err: ErrorDetails, pruned: set[Loc]) -> bool:
    """True for errors that exist only because a pruned element is gone."""
    loc = _strip_root(err["loc"])
    if any(loc[: len(cut)] == cut for cut in pruned):
        return True
    if err["type"] == "model_validation_format":  # e.g. a ``_x`` left empty by the pruning
        return any(cut[: len(loc)] == loc for cut in pruned)
    if err["type"] in _MISSING and loc and isinstance(loc[-1], str):  # its ``_x`` was pruned
        sibling = (*loc[:-1], f"_{loc[-1]}")
        return any(cut[: len(sibling)] == sibling for cut in pruned)
    if _is_choice_error(err):  # a required choice whose given type was pruned
        return any((*loc, name) in pruned for name in _QUOTED_NAME.findall(err["msg"]))
    return False


def _strip_root(loc: Loc) -> Loc:
    return loc[:-1] if loc and loc[-1] == "root" else loc


def _without(data: dict[str, Any], pruned: set[Loc]) -> dict[str, Any]:
    copy = deepcopy(data)
    for loc in sorted(pruned, key=len, reverse=True):
        parent = _lookup(copy, list(loc[:-1])) if len(loc) > 1 else copy
        if isinstance(parent, dict) and isinstance(loc[-1], str):
            parent.pop(loc[-1], None)
    return copy


# --- pydantic errors -> issues ------------------------------------------------------------------


def _issue_of(err: ErrorDetails, prefix: str, data: dict[str, Any]) -> Issue:
    kind = err["type"]
    message = " ".join(err["msg"].removeprefix("Value error, ").split()).rstrip(".")
    segments = _segments(err["loc"], keep_last_underscore=kind == "extra_forbidden")
    if _is_choice_error(err):
        return _choice_issue(message, prefix, segments, data)
    location = _format_path(prefix, segments)
    if kind == "json_invalid":  # fhir.resources reads a string where an object belongs as JSON
        diagnostics = f"{location}: expected a JSON object{_shown_input(err.get('input'))}"
    elif kind == "extra_forbidden":
        diagnostics = f"{location}: unknown element '{err['loc'][-1]}'"
    elif kind in _MISSING:
        diagnostics = f"{location}: required element is missing"
    else:
        diagnostics = f"{location}: {message}{_shown_input(err.get('input'))}"
    return _issue(_ISSUE_CODES.get(kind, "value"), diagnostics, location)


def _segments(loc: tuple[int | str, ...], *, keep_last_underscore: bool) -> list[Segment]:
    """pydantic loc -> FHIRPath steps: ``_x`` is element ``x``; fhir.resources' markers go."""
    segments: list[Segment] = list(loc)
    if segments and segments[-1] == "root":  # whole-element errors of fhir.resources
        segments.pop()
    last = len(segments) - 1
    for i, segment in enumerate(segments):
        if segment == "resource_type":
            segments[i] = "resourceType"
        elif _is_extension_sibling(segment) and not (keep_last_underscore and i == last):
            segments[i] = str(segment)[1:]
    return segments


def _is_extension_sibling(segment: Segment) -> bool:
    return isinstance(segment, str) and segment.startswith("_") and len(segment) > 1


def _choice_issue(message: str, prefix: str, segments: list[Segment], data: Any) -> Issue:
    """A choice element ``x[x]`` given with several types, or required and absent."""
    names = _QUOTED_NAME.findall(message)
    stem = _choice_stem(names)
    location = _format_path(prefix, [*segments, stem])
    if "got multiple" in message:
        element = _lookup(data, segments)
        given = [n for n in names if isinstance(element, dict) and n in element]
        shown = ", ".join(given) or ", ".join(names)
        diagnostics = f"{location}[x] is given more than once ({shown}); only one type is allowed"
        return _issue("structure", diagnostics, location)
    diagnostics = f"{location}[x] is required (one of {', '.join(names)})"
    return _issue("required", diagnostics, location)


def _choice_stem(names: list[str]) -> str:
    """``['valueDate', 'valueDateTime']`` -> ``value``: the longest prefix before a type name."""
    if not names:
        return "value[x]"
    first = names[0]
    for n in range(len(first) - 1, 0, -1):
        if all(len(x) > n and x.startswith(first[:n]) and x[n].isupper() for x in names):
            return first[:n]
    return first


def _lookup(data: Any, segments: list[Segment]) -> Any:
    node = data
    for segment in segments:
        try:
            node = node[segment]
        except (KeyError, IndexError, TypeError):
            key = f"_{segment}" if isinstance(segment, str) else segment
            try:
                node = node[key]
            except (KeyError, IndexError, TypeError):
                return None
    return node


def _shown_input(value: Any) -> str:
    if isinstance(value, str | int | float | bool):
        shown = repr(value)
        return f" (got {shown[:77] + '...' if len(shown) > 80 else shown})"
    return ""


def _format_path(prefix: str, segments: Sequence[Segment]) -> str:
    parts = [prefix]
    for segment in segments:
        parts.append(f"[{segment}]" if isinstance(segment, int) else f".{segment}")
    return "".join(parts)


# --- the walk: nested resource types and NHS numbers --------------------------------------------


def _scan(resource: dict[str, Any], prefix: str) -> tuple[list[Issue], bool]:
    """Walk the whole resource once; return its NHS-number and nested-type issues.

    The flag is True when a nested resource has a type R4B does not know.
    """
    issues: list[Issue] = []
    unknown = _walk(resource, prefix, [], issues)
    return issues, unknown


def _walk(node: dict[str, Any], prefix: str, path: list[Segment], issues: list[Issue]) -> bool:
    unknown = False
    if path and "resourceType" in node:
        resource_type = node["resourceType"]
        if not isinstance(resource_type, str) or _resource_class(resource_type) is None:
            location = _format_path(prefix, path)
            diagnostics = (
                f"{location}: resourceType {resource_type!r} is not a FHIR R4 resource type"
            )
            issues.append(_issue("not-supported", diagnostics, location))
            unknown = True
    if node.get("system") == NHS_NUMBER_SYSTEM:
        _check_nhs_number(node, prefix, path, issues)
    for key, value in node.items():
        if isinstance(value, dict):
            path.append(key.removeprefix("_"))
            unknown |= _walk(value, prefix, path, issues)
            path.pop()
        elif isinstance(value, list):
            path.append(key.removeprefix("_"))
            for i, item in enumerate(value):
                if isinstance(item, dict):
                    path.append(i)
                    unknown |= _walk(item, prefix, path, issues)
                    path.pop()
            path.pop()
    return unknown


def _check_nhs_number(
    identifier: dict[str, Any], prefix: str, path: list[Segment], issues: list[Issue]
) -> None:
    value = identifier.get("value")
    if not isinstance(value, str) or is_valid_nhs_number(value):
        return  # a non-string value is the model's to report
    location = _format_path(prefix, [*path, "value"])
    diagnostics = (
        f"{location}: {value!r} is not a valid NHS number "
        "(10 digits, no spaces, with a correct modulus-11 check digit)"
    )
    issues.append(_issue("value", diagnostics, location))


# --- Bundle helpers -----------------------------------------------------------------------------


def _bundle_shell(bundle: dict[str, Any], entries: list[Any]) -> dict[str, Any]:
    """The Bundle without its entries' resources (validated one by one instead)."""
    shell = {k: v for k, v in bundle.items() if k != "entry"}
    if entries:
        shell["entry"] = [
            {k: v for k, v in e.items() if k != "resource"} if isinstance(e, dict) else e
            for e in entries
        ]
    return shell
