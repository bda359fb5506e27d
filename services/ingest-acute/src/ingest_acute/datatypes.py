"""HL7 v2 data types (DTM, XPN, XAD, XTN, CE/CWE, XCN, PL, XON) as FHIR R4 elements.

One ``DataTypes`` serves one message of one feed: it knows the feed's ODS code (to scope
local identifiers) and the zone of times sent without an offset, and it collects warnings
about values it had to leave out (an impossible date, say), which the ACK reports.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

from hl7.datatypes import parse_datetime

from fhir_common.identifiers import (
    ODS_ORGANIZATION_SYSTEM,
    is_valid_ods_code,
    local_identifier_system,
)
from ingest_acute.parsing import Repetition
from ingest_acute.terminology import (
    ADDRESS_USE,
    GMC_NUMBER,
    GMP_NUMBER,
    NAME_USE,
    NMC_NUMBER,
    TELECOM_SYSTEM,
    TELECOM_USE,
    UK_COUNTRIES,
    US_NPI,
    coding_system,
)

Json = dict[str, Any]

_DTM = re.compile(r"^(\d{4,14})(\.\d{1,4})?([+-]\d{4})?$")
_GMP_CODE = re.compile(r"^G\d{7}$")
_PRACTITIONER_SYSTEMS = {"GMC": GMC_NUMBER, "GMP": GMP_NUMBER, "NMC": NMC_NUMBER, "NPI": US_NPI}


class DataTypes:
    def __init__(self, ods: str, zone: ZoneInfo) -> None:
        self.ods = ods
        self.zone = zone
        self.warnings: list[str] = []

    def warn(self, where: str, text: str) -> None:
        self.warnings.append(f"{where}: {text}")

    # -- time ------------------------------------------------------------------------------
    def date_time(self, value: str, where: str) -> str | None:
        """A DTM as a FHIR dateTime; None (with a warning) when it is not a real time.

        FHIR wants a time zone whenever there is a time: a time sent without an offset is
        taken to be local time in ``zone`` (Europe/London by default). Precision is kept:
        ``2010`` stays a year, ``201010`` a month, ``20101010`` a day.
        """
        parsed = self._parse(value, where)
        if parsed is None:
            return None
        moment, digits, fraction = parsed
        if digits <= 8:
            return _partial_date(moment, digits)
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=self.zone)
        return moment.isoformat(timespec="milliseconds" if fraction else "seconds")

    def date(self, value: str, where: str) -> str | None:
        """A DTM as a FHIR date (the date as the sender wrote it, whatever its time)."""
        parsed = self._parse(value, where)
        if parsed is None:
            return None
        moment, digits, _ = parsed
        return _partial_date(moment, min(digits, 8))

    def _parse(self, value: str, where: str) -> tuple[datetime, int, bool] | None:
        if not value:
            return None
        match = _DTM.match(value)
        if match is None or len(match.group(1)) % 2:
            self.warn(where, f"{value!r} is not an HL7 date/time; left out")
            return None
        try:
            moment = parse_datetime(value)
        except ValueError:
            self.warn(where, f"{value!r} is not a real date/time; left out")
            return None
        return moment, len(match.group(1)), bool(match.group(2))

    # -- people and places -------------------------------------------------------------------
    def human_name(self, rep: Repetition) -> Json | None:
        """XPN (or v2.2 PN): family^given^further given^suffix^prefix^degree^type."""
        name: Json = {}
        family = rep.value(1)
        given = [g for g in (rep.value(2), rep.value(3)) if g]
        suffix = [s for s in (rep.value(4), rep.value(6)) if s]
        prefix = rep.value(5)
        use = NAME_USE.get(rep.value(7).upper())
        if use:
            name["use"] = use
        if family:
            name["family"] = family
        if given:
            name["given"] = given
        if prefix:
            name["prefix"] = [prefix]
        if suffix:
            name["suffix"] = suffix
        return name if (family or given) else None

    def address(self, rep: Repetition) -> Json | None:
        """XAD: street^other designation^city^state^postcode^country^type^^county."""
        lines = [" ".join(rep.subcomponents(1)), rep.value(2)]
        address: Json = {}
        use, kind = ADDRESS_USE.get(rep.value(7).upper(), (None, None))
        if use:
            address["use"] = use
        if kind:
            address["type"] = kind
        if any(lines):
            address["line"] = [line for line in lines if line]
        country = rep.value(6)
        county = rep.value(9)
        state = rep.value(4)
        for key, value in (("city", rep.value(3)), ("postalCode", rep.value(5))):
            if value:
                address[key] = value
        if state and (country.upper() in UK_COUNTRIES) and not county:
            county, state = state, ""
        if county:
            address["district"] = county
        if state:
            address["state"] = state
        if country:
            address["country"] = country
        return address if set(address) - {"use", "type"} else None

    def telecom(self, rep: Repetition, default_use: str) -> Json | None:
        """XTN: number^use^equipment^email^country^area^local number^extension."""
        equipment = rep.value(3).upper()
        system = TELECOM_SYSTEM.get(equipment, "phone")
        value = rep.value(1)
        if rep.value(4) and (equipment in {"INTERNET", "X.400"} or not value):
            system, value = "email", rep.value(4)
        if not value:
            value = " ".join(p for p in (rep.value(5), rep.value(6), rep.value(7)) if p)
        if not value:
            value = rep.value(12)
        if not value:
            return None
        contact: Json = {"system": system, "value": value}
        use = "mobile" if equipment == "CP" else TELECOM_USE.get(rep.value(2).upper(), default_use)
        contact["use"] = use
        return contact

    def practitioner(self, rep: Repetition) -> Json | None:
        """XCN as a logical reference: the professional's code, with their name to show."""
        code = rep.value(1)
        name = " ".join(p for p in (rep.value(6), rep.value(3), rep.value(4), rep.value(2)) if p)
        if not code and not name:
            return None
        reference: Json = {}
        if code:
            authority = rep.value(9).upper()
            system = _PRACTITIONER_SYSTEMS.get(authority)
            if _GMP_CODE.match(code):
                system = GMP_NUMBER
            reference["identifier"] = {
                "system": system or local_identifier_system(self.ods, "practitioner"),
                "value": code,
            }
        if name:
            reference["display"] = name
        return reference

    def location(self, rep: Repetition) -> Json | None:
        """PL: point of care^room^bed^facility: a logical reference to the place."""
        parts = [rep.value(4), rep.value(1), rep.value(2), rep.value(3)]
        if not any(parts):
            return None
        return {
            "identifier": {
                "system": local_identifier_system(self.ods, "location"),
                "value": "|".join(parts).rstrip("|"),
            },
            "display": " ".join(p for p in parts[1:] if p) or parts[0],
        }

    def organisation(self, rep: Repetition) -> Json | None:
        """XON: name^^id (v2.3-2.4) or name^...^organisation identifier (XON-10, v2.5+)."""
        name = rep.value(1)
        code = rep.value(10) or rep.value(3)
        if not name and not code:
            return None
        reference: Json = {}
        if code:
            upper = code.upper()
            reference["identifier"] = {
                "system": ODS_ORGANIZATION_SYSTEM
                if is_valid_ods_code(upper)
                else local_identifier_system(self.ods, "organisation"),
                "value": upper if is_valid_ods_code(upper) else code,
            }
        if name:
            reference["display"] = name
        return reference

    # -- codes -------------------------------------------------------------------------------
    def codeable_concept(self, rep: Repetition | None, text: str = "") -> Json | None:
        """CE/CWE: code^text^system^alternate code^alternate text^alternate system."""
        if rep is None:
            return {"text": text} if text else None
        codings = [c for c in (self._coding(rep, 1), self._coding(rep, 4)) if c is not None]
        concept: Json = {}
        if codings:
            concept["coding"] = codings
        shown = text or rep.value(9) or (rep.value(2) if not codings else "")
        if shown:
            concept["text"] = shown
        return concept or None

    def _coding(self, rep: Repetition, first: int) -> Json | None:
        code, display, system_name = (rep.value(first + n) for n in range(3))
        if not code:
            return None
        coding: Json = {}
        system = coding_system(system_name) if system_name else None
        if system:
            coding["system"] = system
        coding["code"] = code
        if display:
            coding["display"] = display
        return coding


def _partial_date(moment: datetime, digits: int) -> str:
    if digits <= 4:
        return f"{moment.year:04d}"
    if digits <= 6:
        return f"{moment.year:04d}-{moment.month:02d}"
    return moment.date().isoformat()


def code_only(rep: Repetition | None, system: str | None = None) -> Json | None:
    """A CodeableConcept of one code from a v2 ID/IS/CWE field, with ``system`` if given."""
    if rep is None or not rep.value(1):
        return None
    coding: Json = {"code": rep.value(1)}
    if system:
        coding = {"system": system, **coding}
    if rep.value(2):
        coding["display"] = rep.value(2)
    return {"coding": [coding]}
