"""A fast, conservative structural check: it can vouch for a resource the full validator would
accept, so that the full validator need not run on it.

The R4B models (fhir.resources, pydantic) check a typical resource in a few hundred
microseconds; that cost sets the ingest rate (DESIGN.md "Budgets"). Most of what arrives is
valid, and for valid data a plain walk over the JSON against the same element definitions
(``fhirschema``) reaches the same verdict many times faster. So:

* ``vouches_for(resource)`` is True only when every element is one R4 defines for its type, every
  value has its type's JSON form and passes that type's rules as fhir.resources applies them
  (the same regular expressions; real calendar dates; ids, codes, decimals, integer ranges),
  required elements are there, choice elements ([x]) are given at most once (once when required),
  nested resources are known types, and every NHS number is valid;
* it is deliberately stricter than the models wherever that is simpler: JSON types are exact
  (no ``"true"`` for true, no ``"5"`` for 5), no ``null``, no empty objects or arrays, no
  ``fhir_comments``, no leap seconds, at most 6 fractional digits, ids at most 64 characters,
  ``uuid`` values never vouched for;
* when it does not vouch, the full validator runs and decides, and its issues are the ones
  reported. So a mistake here can only cost time, unless the walk accepted something the
  models refuse: the tests run both on every sample and on thousands of mutations of them to
  keep it from doing so.
"""

from __future__ import annotations

import base64
import binascii
import math
import re
from collections.abc import Callable
from datetime import date, datetime, time
from functools import cache
from typing import Any

from fhir_common.identifiers import (
    NHS_NUMBER_SYSTEM,
    ODS_ORGANIZATION_SYSTEM,
    ODS_SITE_SYSTEM,
    is_valid_nhs_number,
    is_valid_ods_code,
    normalise_nhs_number,
)
from ingest_gp import fhirschema

_ODS_SYSTEMS = frozenset({ODS_ORGANIZATION_SYSTEM, ODS_SITE_SYSTEM})

# --- primitives ----------------------------------------------------------------------------------

_STRING = re.compile(r"[ \r\n\t\S]+")
_CODE = re.compile(r"[^\s]+(\s[^\s]+)*")
_ID = re.compile(r"[A-Za-z0-9\-.]{1,64}")
_URI = re.compile(r"\S+")
_OID = re.compile(r"urn:oid:[0-2](\.(0|[1-9][0-9]*))+")
_DECIMAL = re.compile(r"-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?")
_BASE64 = re.compile(r"[A-Za-z0-9+/]*={0,2}")
_URL = re.compile(r"https?://[A-Za-z0-9.\-]+(:[0-9]{1,5})?(/\S*)?")
_DATE = re.compile(
    r"([0-9]([0-9]([0-9][1-9]|[1-9]0)|[1-9]00)|[1-9]000)(-(0[1-9]|1[0-2])(-(0[1-9]|[1-2][0-9]|"
    r"3[0-1]))?)?"
)
_DATETIME = re.compile(
    r"([0-9]([0-9]([0-9][1-9]|[1-9]0)|[1-9]00)|[1-9]000)(-(0[1-9]|1[0-2])(-(0[1-9]|[1-2][0-9]|"
    r"3[0-1])(T([01][0-9]|2[0-3]):[0-5][0-9]:([0-5][0-9])(\.[0-9]{1,6})?(Z|([+\-])((0[0-9]|"
    r"1[0-3]):[0-5][0-9]|14:00)))?)?)?"
)
_INSTANT = re.compile(
    r"([0-9]([0-9]([0-9][1-9]|[1-9]0)|[1-9]00)|[1-9]000)-(0[1-9]|1[0-2])-(0[1-9]|[1-2][0-9]|"
    r"3[0-1])T([01][0-9]|2[0-3]):[0-5][0-9]:([0-5][0-9])(\.[0-9]{1,6})?(Z|([+\-])((0[0-9]|"
    r"1[0-3]):[0-5][0-9]|14:00))"
)
_TIME = re.compile(r"([01][0-9]|2[0-3]):[0-5][0-9]:([0-5][0-9])(\.[0-9]{1,6})?")
_INT32 = (-(2**31), 2**31 - 1)


def _string(v: Any) -> bool:
    return type(v) is str and _STRING.fullmatch(v) is not None and not v.isspace()


def _code(v: Any) -> bool:
    return type(v) is str and _CODE.fullmatch(v) is not None


def _id(v: Any) -> bool:
    return type(v) is str and _ID.fullmatch(v) is not None


def _uri(v: Any) -> bool:
    return type(v) is str and _URI.fullmatch(v) is not None


def _url(v: Any) -> bool:
    return type(v) is str and _URL.fullmatch(v) is not None


def _oid(v: Any) -> bool:
    return type(v) is str and _OID.fullmatch(v) is not None


def _markdown(v: Any) -> bool:
    return type(v) is str and v != ""


def _xhtml(v: Any) -> bool:
    return type(v) is str and v.startswith("<div")


def _boolean(v: Any) -> bool:
    return type(v) is bool


def _integer(v: Any) -> bool:
    return type(v) is int and _INT32[0] <= v <= _INT32[1]


def _unsigned(v: Any) -> bool:
    return type(v) is int and 0 <= v <= _INT32[1]


def _positive(v: Any) -> bool:
    return type(v) is int and 1 <= v <= _INT32[1]


def _decimal(v: Any) -> bool:
    if type(v) is int:
        return True
    return type(v) is float and math.isfinite(v) and _DECIMAL.fullmatch(str(v)) is not None


def _base64(v: Any) -> bool:
    if type(v) is not str or not v or len(v) % 4 or _BASE64.fullmatch(v) is None:
        return False
    try:
        base64.b64decode(v, validate=True)
    except (binascii.Error, ValueError):
        return False
    return True


def _date(v: Any) -> bool:
    if type(v) is not str or _DATE.fullmatch(v) is None:
        return False
    if len(v) == 10:
        try:
            date.fromisoformat(v)
        except ValueError:
            return False
    return True


def _datetime(v: Any) -> bool:
    if type(v) is not str or _DATETIME.fullmatch(v) is None:
        return False
    if len(v) >= 10:
        try:
            (datetime if len(v) > 10 else date).fromisoformat(v)
        except ValueError:
            return False
    return True


def _instant(v: Any) -> bool:
    if type(v) is not str or _INSTANT.fullmatch(v) is None:
        return False
    try:
        datetime.fromisoformat(v)
    except ValueError:
        return False
    return True


def _time(v: Any) -> bool:
    if type(v) is not str or _TIME.fullmatch(v) is None:
        return False
    try:
        time.fromisoformat(v)
    except ValueError:
        return False
    return True


def _never(v: Any) -> bool:
    return False


PRIMITIVES: dict[str, Callable[[Any], bool]] = {
    "string": _string,
    "code": _code,
    "id": _id,
    "uri": _uri,
    "canonical": _uri,
    "url": _url,
    "oid": _oid,
    "markdown": _markdown,
    "xhtml": _xhtml,
    "boolean": _boolean,
    "integer": _integer,
    "unsignedInt": _unsigned,
    "positiveInt": _positive,
    "decimal": _decimal,
    "base64Binary": _base64,
    "date": _date,
    "dateTime": _datetime,
    "instant": _instant,
    "time": _time,
    "uuid": _never,
    "integer64": _never,
}

# --- types ---------------------------------------------------------------------------------------

# per element: (is_list, kind, checker or type name, choice stem or None)
_Spec = tuple[bool, str, Any, str | None]


class _Compiled:
    __slots__ = ("choices", "elements", "extensible", "required", "required_choices")

    def __init__(self, type_name: str) -> None:
        info = fhirschema.type_info(type_name)
        self.elements: dict[str, _Spec] = {}
        self.extensible = frozenset(n for n, e in info.elements.items() if e.extensible)
        for name, element in info.elements.items():
            if element.kind == "primitive":
                target: Any = PRIMITIVES.get(element.type, _never)
            else:
                target = element.type
            self.elements[name] = (element.is_list, element.kind, target, element.choice)
        self.required = tuple(n for n, e in info.elements.items() if e.required)
        self.choices = {stem: names for stem, names in info.choices.items()}
        self.required_choices = tuple(info.required_choices)


@cache
def _compiled(type_name: str) -> _Compiled:
    return _Compiled(type_name)


_PRIMITIVE_EXTENSION_KEYS = frozenset({"id", "extension"})


def vouches_for(resource: Any) -> bool:
    """True only if the full validator is sure to accept ``resource`` (see the module doc).

    On the way it makes NHS numbers and ODS codes canonical, in place, as ``checks.canonicalise``
    does (an ODS code still wrong after that is not vouched for).
    """
    try:
        return _resource(resource)
    except (KeyError, TypeError, ValueError, RecursionError):
        return False


def _resource(data: Any) -> bool:
    if type(data) is not dict:
        return False
    resource_type = data.get("resourceType")
    if type(resource_type) is not str or not fhirschema.is_resource_type(resource_type):
        return False
    return _object(data, resource_type, True)


def _object(data: dict[str, Any], type_name: str, is_resource: bool = False) -> bool:
    if not data:
        return False
    if type_name == "Identifier" and not _canonical_identifier(data):
        return False
    spec = _compiled(type_name)
    elements = spec.elements
    chosen: dict[str, str] | None = None  # choice stem -> the element given for it
    for key, value in data.items():
        if key[0] == "_":
            name = key[1:]
            found = elements.get(name)
            if found is None or name not in spec.extensible:
                return False
            if not _primitive_extras(value, found[0], data.get(name)):
                return False
        else:
            name = key
            found = elements.get(key)
            if found is None:
                if key == "resourceType" and is_resource:
                    continue
                return False
            is_list, kind, target, _ = found
            if is_list:
                if type(value) is not list or not value:
                    return False
                if kind == "primitive":
                    for item in value:
                        if item is not None and not target(item):
                            return False
                    if None in value and f"_{key}" not in data:
                        return False
                else:
                    for item in value:
                        if not _complex(item, kind, target):
                            return False
            elif kind == "primitive":
                if not target(value):
                    return False
            elif not _complex(value, kind, target):
                return False
        stem = found[3]
        if stem is not None:
            if chosen is None:
                chosen = {stem: name}
            elif chosen.setdefault(stem, name) != name:
                return False  # two types of one choice element
    for name in spec.required:
        if name not in data and f"_{name}" not in data:
            return False
    return not spec.required_choices or (
        chosen is not None and all(stem in chosen for stem in spec.required_choices)
    )


def _canonical_identifier(data: dict[str, Any]) -> bool:
    """NHS numbers and ODS codes in their canonical form; False if one is wrong."""
    system = data.get("system")
    value = data.get("value")
    if type(value) is not str:
        return system != NHS_NUMBER_SYSTEM or value is None
    if system == NHS_NUMBER_SYSTEM:
        canonical = normalise_nhs_number(value)
        if canonical is None or not is_valid_nhs_number(canonical):
            return False
        data["value"] = canonical
    elif system in _ODS_SYSTEMS:
        code = value.strip().upper()
        if not is_valid_ods_code(code):
            return False
        data["value"] = code
    return True


def _complex(value: Any, kind: str, type_name: str) -> bool:
    if type(value) is not dict:
        return False
    if kind == "resource":
        return _resource(value)
    if "resourceType" in value:
        return False
    return _object(value, type_name)


def _primitive_extras(value: Any, is_list: bool, values: Any) -> bool:
    """A primitive's ``_element``: its id and extensions (a list of them for a list)."""
    if is_list:
        if type(value) is not list or not value or type(values) is not list:
            return False
        if len(value) != len(values):
            return False
        for position, item in enumerate(value):
            if item is None:
                if values[position] is None:
                    return False
                continue
            if not _one_extra(item):
                return False
        return True
    if values is None and not (type(value) is dict and value.get("extension")):
        return False  # a required primitive given by extension only must have extensions
    return _one_extra(value)


def _one_extra(item: Any) -> bool:
    if type(item) is not dict or not item or not item.keys() <= _PRIMITIVE_EXTENSION_KEYS:
        return False
    if "id" in item and not _string(item["id"]):
        return False
    extensions = item.get("extension")
    if extensions is None:
        return "id" in item
    if type(extensions) is not list or not extensions:
        return False
    return all(_complex(e, "complex", "Extension") for e in extensions)
