"""Who is who: NHS numbers, ODS codes, local identifier systems and deterministic resource ids.

These follow DESIGN.md "Identity":

- A resource id is the UUIDv5 of ``<feed>|<resourceType>|<source id>`` in the project namespace
  ``JOINEDUP_NAMESPACE``, so a replayed or duplicated message updates instead of duplicating.
- The patient key (Kafka message key, record partitioning) is the NHS number when the patient has
  a valid one, else ``<feed>|<local patient id>``.
- An NHS number is 10 digits whose last digit is the modulus-11 check digit of the first nine
  (weights 10..2; check = 11 - (sum mod 11); 11 -> 0; 10 -> the number is invalid).

Note that every repdigit (``0000000000``, ``3333333333``, ...) passes the modulus-11 check: the
check digit of nine equal digits ``d`` is ``d`` again. Some feeds send such numbers as
placeholders (the HL7 v2 samples carry ``3333333333``). We accept them, because the check is all
that DESIGN.md and the NHS number format define; a feed that uses a placeholder must drop it before
it reaches ``patient_key``, or those patients will share a key.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterable, Mapping
from typing import Any

NHS_NUMBER_SYSTEM = "https://fhir.nhs.uk/Id/nhs-number"
ODS_ORGANIZATION_SYSTEM = "https://fhir.nhs.uk/Id/ods-organization-code"
ODS_SITE_SYSTEM = "https://fhir.nhs.uk/Id/ods-site-code"

#: Base of the identifier systems JoinedUp mints for provider-local identifiers.
LOCAL_IDENTIFIER_BASE = "https://fhir.joinedup.nhs.uk/Id"

#: Namespace of every JoinedUp resource id. It is itself
#: ``uuid5(NAMESPACE_URL, "https://fhir.joinedup.nhs.uk/Id/resource")``, written out so that it can
#: never change by accident: changing it would give every replayed message a new id.
JOINEDUP_NAMESPACE = uuid.UUID("b70a7f94-9f2e-5cb5-842c-79b85b6aa693")

_NHS_WEIGHTS = (10, 9, 8, 7, 6, 5, 4, 3, 2)
_TEN_DIGITS = re.compile(r"[0-9]{10}")
_NHS_SEPARATORS = str.maketrans("", "", " -\t")
# ODS publishes codes of 3 characters (trusts), 5 (trust sites, ANANA codes), 6 (GP practices) and
# more for some site types; its OrganisationCode attribute is nvarchar(12). Upper case only.
_ODS_CODE = re.compile(r"[A-Z0-9]{3,12}")
_KIND = re.compile(r"[a-z0-9]+(?:-[a-z0-9]+)*")


def nhs_check_digit(first_nine: str) -> int | None:
    """The modulus-11 check digit of nine digits, or None when the remainder makes it 10."""
    total = sum(int(digit) * weight for digit, weight in zip(first_nine, _NHS_WEIGHTS, strict=True))
    check = 11 - total % 11
    if check == 11:
        return 0
    return None if check == 10 else check


def is_valid_nhs_number(value: str) -> bool:
    """True when ``value`` is exactly 10 ASCII digits with a correct check digit.

    No spaces or hyphens are allowed here: this is the form stored in FHIR identifiers and used as
    the patient key. Use ``normalise_nhs_number`` for human-formatted input.
    """
    if not isinstance(value, str) or not _TEN_DIGITS.fullmatch(value):
        return False
    return nhs_check_digit(value[:9]) == int(value[9])


def normalise_nhs_number(raw: str) -> str | None:
    """The 10-digit NHS number in ``raw`` (spaces and hyphens removed), or None if not valid."""
    if not isinstance(raw, str):
        return None
    candidate = raw.strip().translate(_NHS_SEPARATORS)
    return candidate if is_valid_nhs_number(candidate) else None


def is_valid_ods_code(code: str) -> bool:
    """True for a well-formed ODS organisation or site code: 3-12 upper-case letters/digits.

    This checks the form only (RR8, RR813, A81001, G7H8J); whether the code exists is a question
    for the ODS API.
    """
    return isinstance(code, str) and _ODS_CODE.fullmatch(code) is not None


def local_identifier_system(ods_code: str, kind: str = "mrn") -> str:
    """The identifier system for a provider's own identifiers of one kind.

    Convention: ``https://fhir.joinedup.nhs.uk/Id/<ODS code>/<kind>``, e.g.
    ``https://fhir.joinedup.nhs.uk/Id/RR8/mrn`` for hospital numbers issued by the trust RR8, or
    ``.../Id/A81001/patient-id`` for a GP system's internal patient id. The ODS code scopes the
    value (two trusts may both have a patient 123456); ``kind`` is a lower-case slug
    (``[a-z0-9]`` words joined by ``-``) naming what the value is. A provider that publishes its
    own system URI should be used with that URI instead.
    """
    code = ods_code.strip().upper()
    if not is_valid_ods_code(code):
        raise ValueError(f"not an ODS code: {ods_code!r}")
    if not _KIND.fullmatch(kind):
        raise ValueError(f"identifier kind must be a lower-case slug like 'mrn': {kind!r}")
    return f"{LOCAL_IDENTIFIER_BASE}/{code}/{kind}"


def resource_id(feed: str, resource_type: str, source_id: str) -> str:
    """The deterministic id of a resource: UUIDv5 of ``<feed>|<resourceType>|<source id>``."""
    return str(uuid.uuid5(JOINEDUP_NAMESPACE, f"{feed}|{resource_type}|{source_id}"))


def patient_key(nhs_number: str | None, feed: str, local_id: str) -> str:
    """The Kafka key of a patient's messages: the NHS number if valid, else ``<feed>|<local id>``.

    ``nhs_number`` may be human-formatted (``943 476 5919``); it is normalised first.
    """
    normalised = normalise_nhs_number(nhs_number) if nhs_number else None
    return normalised if normalised else f"{feed}|{local_id}"


def nhs_number_of(resource: Mapping[str, Any]) -> str | None:
    """The first valid NHS number among a Patient's identifiers (spaces tolerated), or None."""
    for identifier in _as_list(resource.get("identifier")):
        if not isinstance(identifier, Mapping) or identifier.get("system") != NHS_NUMBER_SYSTEM:
            continue
        value = identifier.get("value")
        normalised = normalise_nhs_number(value) if isinstance(value, str) else None
        if normalised:
            return normalised
    return None


def _as_list(value: Any) -> Iterable[Any]:
    if value is None:
        return ()
    return value if isinstance(value, list) else (value,)
