"""FHIR XML in and out (``application/fhir+xml``).

Reading turns the XML into the JSON form FHIR defines (lists where the element repeats,
numbers and booleans typed, primitive ids and extensions in ``_element``, the narrative's
XHTML as a string) using the element definitions of ``fhirschema``. The JSON then goes through
exactly the same validation as a JSON push, so every problem is reported with its FHIRPath
location either way. The reader only converts: an element R4 does not define is passed on under
its own name for the validator to report; only what JSON cannot express at all (text where a
value belongs, an element in another namespace, a repeated single element) is reported here.

Writing (responses) goes through the R4B models' own XML serialiser.

The parser resolves no entities, loads no DTD and never touches the network.
"""

from __future__ import annotations

import re
from typing import Any

from lxml import etree

from fhir_common.errors import FhirError, Issue
from ingest_gp import fhirschema

FHIR_NS = "http://hl7.org/fhir"
XHTML_NS = "http://www.w3.org/1999/xhtml"

_INTEGER_TYPES = frozenset({"integer", "unsignedInt", "positiveInt", "integer64"})
_INTEGER = re.compile(r"[-+]?[0-9]+")
_DECIMAL = re.compile(r"-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?")


def _parser() -> etree.XMLParser:
    return etree.XMLParser(
        resolve_entities=False,
        no_network=True,
        load_dtd=False,
        dtd_validation=False,
        remove_comments=True,
        remove_pis=True,
        huge_tree=False,
    )


def read_xml(body: bytes) -> dict[str, Any]:
    """The JSON form of one FHIR resource written in XML; a FhirError if it cannot be read."""
    try:
        root = etree.fromstring(body, parser=_parser())
    except etree.XMLSyntaxError as exc:
        raise FhirError.single(400, "structure", f"Malformed XML: {exc}") from exc
    if root.getroottree().docinfo.doctype:
        raise FhirError.single(400, "security", "XML with a DOCTYPE is not accepted")
    issues: list[Issue] = []
    resource = _resource(root, None, issues)
    if issues:
        raise FhirError(400, issues)
    return resource


def _local(element: Any) -> tuple[str | None, str]:
    qname = etree.QName(element)
    return qname.namespace, qname.localname


def _issue(code: str, where: str, text: str) -> Issue:
    return Issue(code=code, diagnostics=f"{where}: {text}", expression=(where,))


def _resource(element: Any, path: str | None, issues: list[Issue]) -> dict[str, Any]:
    namespace, name = _local(element)
    where = path or name
    if namespace != FHIR_NS:
        issues.append(_issue("structure", where, f"<{name}> is not in the FHIR namespace"))
        return {}
    if not fhirschema.is_resource_type(name):
        issues.append(_issue("not-supported", where, f"{name!r} is not a FHIR R4 resource type"))
        return {"resourceType": name}
    out: dict[str, Any] = {"resourceType": name}
    _fill(out, element, name, path or name, issues)
    return out


def _fill(
    out: dict[str, Any], element: Any, type_name: str, path: str, issues: list[Issue]
) -> None:
    info = fhirschema.type_info(type_name)
    for attribute, value in element.attrib.items():
        if attribute == "id" or (attribute == "url" and type_name == "Extension"):
            out[attribute] = value
        elif attribute == "value":
            issues.append(_issue("structure", path, "a value attribute on a complex element"))
    if element.text and element.text.strip():
        issues.append(_issue("structure", path, "text content where only elements belong"))
    counts: dict[str, int] = {}
    for child in element:
        if not isinstance(child.tag, str):
            continue
        namespace, name = _local(child)
        index = counts.get(name, 0)
        counts[name] = index + 1
        child_path = f"{path}.{name}"
        definition = info.elements.get(name)
        if namespace != FHIR_NS and not (
            definition is not None and definition.type == "xhtml" and namespace == XHTML_NS
        ):
            issues.append(_issue("structure", child_path, f"<{name}> is not in the FHIR namespace"))
            continue
        if definition is None:
            # Passed on as it is: the validator reports the unknown element where it is.
            out[name] = child.get("value", "")
            continue
        if not definition.is_list and index > 0:
            issues.append(_issue("structure", child_path, "given more than once"))
            continue
        at = f"{child_path}[{index}]" if definition.is_list else child_path
        if definition.kind == "primitive":
            _primitive(out, child, definition, index, at, issues)
            continue
        if definition.kind == "resource":
            inner = [c for c in child if isinstance(c.tag, str)]
            if len(inner) != 1:
                issues.append(_issue("structure", at, "must hold exactly one resource"))
                continue
            content: Any = _resource(inner[0], at, issues)
        else:
            content = {}
            _fill(content, child, definition.type, at, issues)
        if definition.is_list:
            out.setdefault(name, []).append(content)
        else:
            out[name] = content


def _primitive(
    out: dict[str, Any],
    element: Any,
    definition: fhirschema.Element,
    index: int,
    path: str,
    issues: list[Issue],
) -> None:
    name = definition.name
    if definition.type == "xhtml":
        out[name] = etree.tostring(element, encoding="unicode", with_tail=False)
        return
    raw = element.get("value")
    typed = None if raw is None else _typed(raw, definition.type)
    extra: dict[str, Any] = {}
    if element.get("id") is not None:
        extra["id"] = element.get("id")
    extensions: list[dict[str, Any]] = []
    for position, child in enumerate(c for c in element if isinstance(c.tag, str)):
        namespace, child_name = _local(child)
        if namespace != FHIR_NS or child_name != "extension":
            issues.append(
                _issue("structure", f"{path}.{child_name}", "a primitive holds only extensions")
            )
            continue
        extension: dict[str, Any] = {}
        _fill(extension, child, "Extension", f"{path}.extension[{position}]", issues)
        extensions.append(extension)
    if extensions:
        extra["extension"] = extensions
    if definition.is_list:
        values = out.setdefault(name, [])
        values.append(typed)
        if extra:
            siblings = out.setdefault(f"_{name}", [])
            siblings.extend([None] * (len(values) - len(siblings)))
            siblings[-1] = extra
        elif f"_{name}" in out:
            out[f"_{name}"].append(None)
        return
    if typed is not None:
        out[name] = typed
    if extra:
        out[f"_{name}"] = extra
    if typed is None and not extra:
        issues.append(_issue("required", path, "has neither a value nor extensions"))


def _typed(raw: str, type_name: str) -> Any:
    """A primitive's JSON value: booleans and numbers typed, everything else a string."""
    if type_name == "boolean":
        return {"true": True, "false": False}.get(raw, raw)
    if type_name in _INTEGER_TYPES and _INTEGER.fullmatch(raw):
        return int(raw)
    if type_name == "decimal" and _DECIMAL.fullmatch(raw):
        if _INTEGER.fullmatch(raw):
            return int(raw)
        return float(raw)
    return raw


def write_xml(resource: dict[str, Any]) -> bytes:
    """A resource in FHIR XML, element order as FHIR defines it, values exactly as in the JSON.

    For resources that passed validation (what ingest-gp publishes, its answers): anything the
    JSON holds that R4 does not define is left out.
    """
    root = _write_resource(resource)
    data: bytes = etree.tostring(root, xml_declaration=True, encoding="UTF-8")
    return data


def _write_resource(resource: dict[str, Any]) -> Any:
    resource_type = str(resource["resourceType"])
    element = etree.Element(f"{{{FHIR_NS}}}{resource_type}", nsmap={None: FHIR_NS})
    _write_children(element, resource, resource_type)
    return element


def _write_children(parent: Any, data: dict[str, Any], type_name: str) -> None:
    info = fhirschema.type_info(type_name)
    for name in info.order:
        if name not in data and f"_{name}" not in data:
            continue
        definition = info.elements[name]
        if definition.kind == "primitive" and not info.is_resource and name == "id":
            continue  # an element's id is an attribute (written by the caller)
        if type_name == "Extension" and name == "url":
            continue
        values = data.get(name)
        extras = data.get(f"_{name}")
        if definition.is_list:
            values = values if isinstance(values, list) else []
            extras = extras if isinstance(extras, list) else []
            count = max(len(values), len(extras))
            values = values + [None] * (count - len(values))
            extras = extras + [None] * (count - len(extras))
        else:
            values, extras = [values], [extras]
        for value, extra in zip(values, extras, strict=True):
            _write_one(parent, name, definition, value, extra)


def _write_one(
    parent: Any, name: str, definition: fhirschema.Element, value: Any, extra: Any
) -> None:
    if definition.kind == "primitive":
        if definition.type == "xhtml":
            if isinstance(value, str):
                parent.append(etree.fromstring(value.encode(), parser=_parser()))
            return
        if value is None and not extra:
            return
        child = etree.SubElement(parent, f"{{{FHIR_NS}}}{name}")
        if isinstance(extra, dict) and extra.get("id") is not None:
            child.set("id", str(extra["id"]))
        if value is not None:
            child.set("value", _text(value))
        for extension in (extra or {}).get("extension", []) if isinstance(extra, dict) else []:
            _write_complex(child, "extension", extension, "Extension")
        return
    if not isinstance(value, dict):
        return
    if definition.kind == "resource":
        child = etree.SubElement(parent, f"{{{FHIR_NS}}}{name}")
        child.append(_write_resource(value))
        return
    _write_complex(parent, name, value, definition.type)


def _write_complex(parent: Any, name: str, value: dict[str, Any], type_name: str) -> None:
    child = etree.SubElement(parent, f"{{{FHIR_NS}}}{name}")
    if value.get("id") is not None:
        child.set("id", str(value["id"]))
    if type_name == "Extension" and value.get("url") is not None:
        child.set("url", str(value["url"]))
    _write_children(child, value, type_name)


def _text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)
