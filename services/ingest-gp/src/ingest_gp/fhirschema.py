"""The shape of FHIR R4 types, read once from fhir.resources' R4B models.

For every resource, datatype and backbone element: its elements by JSON name, whether each is
a list, and whether it holds a primitive (and which), a complex type or a whole resource. The
XML reader (``fhirxml``), the CSV mappings (``csvmap``) and the fast structural check
(``fastcheck``) all work from this one description, so they agree with the validator about what
FHIR R4 allows.
"""

from __future__ import annotations

import typing
from dataclasses import dataclass
from functools import cache
from typing import Any, Literal

from fhir.resources.R4B import get_fhir_model_class

Kind = Literal["primitive", "complex", "resource"]

# fhir.resources' primitive annotations → FHIR primitive type names
_PRIMITIVES: dict[str, str] = {}


def _primitive_names() -> dict[Any, str]:
    from fhir_core.constraints import FHIR_PRIMITIVES_MAPS

    return dict(FHIR_PRIMITIVES_MAPS)


@dataclass(frozen=True, slots=True)
class Element:
    name: str  # JSON name, e.g. "valueQuantity", "class"
    is_list: bool
    kind: Kind
    type: str  # primitive name ("dateTime") or model name ("CodeableConcept", "BundleEntry")
    required: bool  # min cardinality 1 (for a primitive: value or extension)
    choice: str | None  # "value" for value[x] elements
    choice_required: bool
    extensible: bool = False  # a primitive that may carry ``_name`` (id, extensions)


@dataclass(frozen=True, slots=True)
class TypeInfo:
    name: str
    elements: dict[str, Element]
    choices: dict[str, tuple[str, ...]]  # stem -> element names
    required_choices: frozenset[str]
    is_resource: bool
    order: tuple[str, ...]  # the elements in the order FHIR (and so XML) defines


def _unwrap(annotation: Any) -> list[Any]:
    """Every leaf type in an annotation (Optional, List, Annotated and unions taken apart)."""
    origin = typing.get_origin(annotation)
    if origin is None:
        return [annotation]
    if origin is typing.Annotated:
        return [annotation]
    out: list[Any] = []
    for arg in typing.get_args(annotation):
        if arg is type(None):
            continue
        out += _unwrap(arg)
    return out


def _is_list(annotation: Any) -> bool:
    origin = typing.get_origin(annotation)
    if origin is list:
        return True
    if origin is None or origin is typing.Annotated:
        return False
    return any(_is_list(a) for a in typing.get_args(annotation) if a is not type(None))


def _primitive_of(field: Any, leaf: Any) -> str | None:
    names = _primitive_names()
    if typing.get_origin(leaf) is typing.Annotated:
        for meta in typing.get_args(leaf)[1:]:
            if meta.__class__ in names:
                return names[meta.__class__]
        base = typing.get_args(leaf)[0]
        if base in names:
            return names[base]
    if leaf in names:
        for meta in field.metadata:
            if meta.__class__ in names:
                return names[meta.__class__]
        return names[leaf]
    return None


@cache
def model(name: str) -> Any:
    """The R4B model class of a resource, datatype or backbone element name."""
    return get_fhir_model_class(name)


def _model_of(leaf: Any) -> Any | None:
    getter = getattr(leaf, "get_model_klass", None)
    return getter() if getter else None


@cache
def type_info(name: str) -> TypeInfo:
    """Elements of one type; raises KeyError for a name R4B does not know."""
    try:
        klass = model(name)
    except (KeyError, ValueError) as exc:
        raise KeyError(name) from exc
    elements: dict[str, Element] = {}
    aliases = {f.alias or n for n, f in klass.model_fields.items()}
    choices: dict[str, list[str]] = {}
    required_choices: set[str] = set()
    for field_name, field in klass.model_fields.items():
        extra = field.json_schema_extra if isinstance(field.json_schema_extra, dict) else {}
        if not extra.get("element_property"):
            continue
        json_name = field.alias or field_name
        leaves = _unwrap(field.annotation)
        leaf = leaves[0]
        primitive = _primitive_of(field, leaf)
        kind: Kind
        if primitive is not None:
            kind, type_name = "primitive", primitive
        else:
            target = _model_of(leaf)
            if target is None:
                raise RuntimeError(f"cannot tell the type of {name}.{json_name}")
            resource_type = target.get_resource_type()
            if resource_type == "Resource":
                kind, type_name = "resource", "Resource"
            else:
                kind, type_name = "complex", target.__name__
        choice = extra.get("one_of_many")
        choice_required = bool(extra.get("one_of_many_required"))
        element = Element(
            name=json_name,
            is_list=_is_list(field.annotation),
            kind=kind,
            type=type_name,
            required=bool(field.is_required() or extra.get("element_required")),
            choice=str(choice) if choice else None,
            choice_required=choice_required,
            extensible=kind == "primitive" and f"_{json_name}" in aliases,
        )
        elements[json_name] = element
        if element.choice:
            choices.setdefault(element.choice, []).append(json_name)
            if choice_required:
                required_choices.add(element.choice)
    sequence = [n for n in klass.elements_sequence() if n in elements]
    order = tuple(sequence + [n for n in elements if n not in sequence])
    return TypeInfo(
        name=name,
        elements=elements,
        choices={k: tuple(v) for k, v in choices.items()},
        required_choices=frozenset(required_choices),
        is_resource=bool(klass.has_resource_base()),
        order=order,
    )


@cache
def is_resource_type(name: str) -> bool:
    """A concrete resource type R4B knows (``Patient``; not ``Resource``, not ``Coding``)."""
    if not name or not name[0].isupper() or name in ("Resource", "DomainResource"):
        return False
    try:
        return type_info(name).is_resource
    except KeyError:
        return False


def element(type_name: str, name: str) -> Element | None:
    return type_info(type_name).elements.get(name)


def choice_types(type_name: str, stem: str) -> tuple[str, ...]:
    """The element names of a choice (``value`` → ``valueQuantity``, ``valueString`` ...)."""
    return type_info(type_name).choices.get(stem, ())
