"""Community, mental-health and social-care feeds: CSV extracts, each provider in its own layout
(column names, date formats, codes), with a declarative mapping file per feed that names where
each column goes in FHIR (``mapping_for``; written next to the extracts as ``mapping.yaml``).

* Community (``community-zc1``): a daily extract of contacts. NHS numbers as people write them
  (``999 123 4567``), dates ``dd/mm/yyyy``, local times ``HH:MM``, sex ``Male``/``Female``.
* Mental health (``mh-zm1``): a daily extract of activity. NHS numbers as 10 digits, ISO dates,
  sex as the NHS Data Dictionary's ``1``/``2``, coded outcomes ``ATT``/``DNA``/``CAN``.
* Social care (``social-zs1``..``zs3``, one per borough): a weekly extract of care packages
  (new, reviewed, ended). NHS numbers often blank, dates ``dd-Mon-yyyy``.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Any

from fhir_common.identifiers import (
    NHS_NUMBER_SYSTEM,
    ODS_ORGANIZATION_SYSTEM,
    local_identifier_system,
)
from joinedup.synth import clock as clk
from joinedup.synth import identity
from joinedup.synth.clock import Clock
from joinedup.synth.events import Event, Kind
from joinedup.synth.noise import Noise
from joinedup.synth.person import Person
from joinedup.synth.world import NMC_SYSTEM, Practice, Provider, World

COMMUNITY_COLUMNS = (
    "Contact ID",
    "NHS Number",
    "Local Patient ID",
    "Surname",
    "Forename",
    "Date of Birth",
    "Gender",
    "Postcode",
    "Registered GP Practice",
    "Contact Date",
    "Contact Time",
    "Team",
    "Contact Type",
    "Staff Role",
    "Staff ID",
    "Attendance",
)
MENTAL_HEALTH_COLUMNS = (
    "ActivityID",
    "ClientID",
    "NHSNumber",
    "DOB",
    "Sex",
    "ActivityDateTime",
    "Service",
    "ContactMedium",
    "CPA",
    "Outcome",
)
SOCIAL_CARE_COLUMNS = (
    "Package ID",
    "Record Type",
    "Record Date",
    "Person ID",
    "NHS No",
    "Surname",
    "First Name",
    "Date of Birth",
    "Service Type",
    "Service Start Date",
    "Service End Date",
    "Planned Hours Per Week",
)

_TEAMS = {
    "district-nursing": ("District Nursing", "Community Nurse"),
    "community-matron": ("Community Matron", "Care Coordinator"),
    "diabetes-specialist-nursing": ("Diabetes Specialist Nursing", "Diabetes Specialist Nurse"),
    "rapid-response": ("Rapid Response", "Community Nurse"),
}
_COMMUNITY_CONTACT = {
    "home": "Face to face - home",
    "clinic": "Face to face - clinic",
    "telephone": "Telephone",
}
_COMMUNITY_ATTENDANCE = {
    "attended": "Attended",
    "did-not-attend": "DNA",
    "cancelled": "Cancelled by patient",
}
_MH_SERVICE = {"community-mental-health-team": "CMHT", "memory-service": "Memory Service"}
_MH_OUTCOME = {"attended": "ATT", "did-not-attend": "DNA", "cancelled": "CAN"}
_SOCIAL_SERVICE = {
    "home-care": "Home Care",
    "residential-care": "Residential Care",
    "nursing-care": "Nursing Care",
    "reablement": "Reablement",
}
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


@dataclass(slots=True)
class CsvRow:
    sent: int  # the extract that carries it
    occurred: int
    feed: str
    values: list[str]


def _dd_mon_yyyy(iso_day: str) -> str:
    return f"{iso_day[8:10]}-{_MONTHS[int(iso_day[5:7]) - 1]}-{iso_day[:4]}"


class CsvFeeds:
    """Writes the CSV rows of one practice's patients for every CSV-extract provider."""

    def __init__(
        self, world: World, practice: Practice, clock: Clock, noise: Noise, window: float
    ) -> None:
        self.world = world
        self.window = window
        self.practice = practice
        self.clock = clock
        self.noise = noise
        self.community = world.community
        self.mental_health = world.mental_health
        self.borough = world.boroughs[practice.borough]

    def rows(self, person: Person, event: Event, rng: random.Random, nhs: str) -> list[CsvRow]:
        if event.kind is Kind.COMMUNITY:
            return self._daily(event, rng, self.community, self._community(person, event, rng, nhs))
        if event.kind is Kind.MENTAL_HEALTH:
            values = self._mental_health(person, event, rng, nhs)
            return self._daily(event, rng, self.mental_health, values)
        if event.kind is Kind.SOCIAL_CARE:
            return self._social_care(person, event, rng, nhs)
        return []

    def _nhs(self, rng: random.Random, nhs: str, blank: float) -> str:
        u = rng.random()
        if u < blank:
            return ""
        if u < blank + self.noise.csv_nhs_typo:
            return identity.corrupt_check_digit(nhs)
        return nhs

    def _daily(
        self, event: Event, rng: random.Random, provider: Provider, values: list[str]
    ) -> list[CsvRow]:
        """Contacts reach the next night's 02:00 extract; a few miss it by some days."""
        occurred = self.clock.epoch(event.start)
        extract_day = math.floor(event.start) + 1
        if rng.random() < self.noise.csv_late:
            extract_day += rng.randint(1, 3)
        sent = self.clock.epoch(extract_day + 2.0 / 24.0)
        rows = [CsvRow(sent, occurred, provider.feed_id, values)]
        if rng.random() < self.noise.csv_repeat:
            rows.append(CsvRow(sent + 86_400, occurred, provider.feed_id, values))
        return rows

    def _community(self, person: Person, event: Event, rng: random.Random, nhs: str) -> list[str]:
        team, medium = event.detail.split("|")
        team_name, role = _TEAMS[team]
        day, time = clk.local_parts(self.clock.epoch(event.start))
        given, family = identity.person_name(person.index, person.female)
        _, postcode = identity.address(person.index)
        number = self._nhs(rng, nhs, self.noise.csv_nhs_blank)
        staff = self.community.staff[(person.index + event.serial) % len(self.community.staff)]
        birth = person.birth_date
        return [
            f"{self.community.ods}-{person.index:07d}-{event.serial:04d}",
            identity.with_spaces(number) if number else "",
            f"C{person.index:08d}",
            family.upper(),
            given,
            f"{birth[8:10]}/{birth[5:7]}/{birth[:4]}",
            "Female" if person.female else "Male",
            postcode,
            self.practice.ods,
            day,
            time,
            team_name,
            _COMMUNITY_CONTACT[medium],
            role,
            staff.registration,
            _COMMUNITY_ATTENDANCE[event.outcome],
        ]

    def _mental_health(
        self, person: Person, event: Event, rng: random.Random, nhs: str
    ) -> list[str]:
        service, medium, cpa = event.detail.split("|")
        day, time = clk.local_parts(self.clock.epoch(event.start))
        iso_day = f"{day[6:10]}-{day[3:5]}-{day[0:2]}"
        return [
            f"{self.mental_health.ods}A{person.index:07d}{event.serial:04d}",
            f"M{person.index:07d}",
            self._nhs(rng, nhs, self.noise.csv_nhs_blank),
            person.birth_date,
            "2" if person.female else "1",
            f"{iso_day}T{time}",
            _MH_SERVICE[service],
            "F2F" if medium == "face-to-face" else "TEL",
            cpa,
            _MH_OUTCOME[event.outcome],
        ]

    def _social_care(
        self, person: Person, event: Event, rng: random.Random, nhs: str
    ) -> list[CsvRow]:
        """A package: New when it starts (or in the first extract if it began earlier), a Review
        every year, Ended when it ends; each row in the next Monday's extract."""
        window_end = self.window
        start = event.start
        records: list[tuple[str, float]] = [("New", max(start, 0.0))]
        review = start + 365.0
        while review < min(event.end, window_end):
            if review > 0:
                records.append(("Review", review))
            review += 365.0
        if event.end < window_end and not math.isinf(event.end):
            records.append(("Ended", event.end))
        given, family = identity.person_name(person.index, person.female)
        # social care records lack NHS numbers far more often than health records do
        number = self._nhs(rng, nhs, max(self.noise.csv_nhs_blank * 4, 0.0))
        start_day = clk.iso_date(self.clock.epoch(start))
        rows: list[CsvRow] = []
        for record, at in records:
            ended = record == "Ended"
            values = [
                f"{self.borough.ods}-{person.index:07d}-{event.serial:04d}",
                record,
                _dd_mon_yyyy(clk.iso_date(self.clock.epoch(at))),
                f"{self.borough.ods}{person.index:08d}",
                number,
                family,
                given,
                _dd_mon_yyyy(person.birth_date),
                _SOCIAL_SERVICE[event.detail],
                _dd_mon_yyyy(start_day),
                _dd_mon_yyyy(clk.iso_date(self.clock.epoch(event.end))) if ended else "",
                event.outcome if event.detail in ("home-care", "reablement") else "",
            ]
            sent = self._next_monday(at, rng)
            rows.append(CsvRow(sent, self.clock.epoch(at), self.borough.feed_id, values))
        return rows

    def _next_monday(self, at: float, rng: random.Random) -> int:
        weekday = (self.clock.start.weekday() + math.floor(at)) % 7
        day = math.floor(at) + (7 - weekday)
        if rng.random() < self.noise.csv_late:
            day += 7
        return self.clock.epoch(day + 3.0 / 24.0)


# --- mapping files ------------------------------------------------------------------------------


def columns_of(world: World, feed_id: str) -> tuple[str, ...]:
    if feed_id == world.community.feed_id:
        return COMMUNITY_COLUMNS
    if feed_id == world.mental_health.feed_id:
        return MENTAL_HEALTH_COLUMNS
    return SOCIAL_CARE_COLUMNS


def mapping_for(world: World, feed_id: str) -> dict[str, Any]:
    """The declarative mapping of one CSV feed: columns -> FHIR elements, code translations and
    date formats. Its shape is a proposal for the CSV-ingest issue, which owns the reader."""
    if feed_id == world.community.feed_id:
        return _community_mapping(world.community)
    if feed_id == world.mental_health.feed_id:
        return _mental_health_mapping(world.mental_health)
    borough = next(b for b in world.boroughs if b.feed_id == feed_id)
    return _social_care_mapping(borough)


def _format() -> dict[str, Any]:
    return {
        "type": "csv",
        "delimiter": ",",
        "quote": '"',
        "encoding": "utf-8",
        "header": True,
        "line_terminator": "\r\n",
        "timezone": "Europe/London",
    }


def _community_mapping(p: Provider) -> dict[str, Any]:
    return {
        "feed": p.feed_id,
        "provider": {"ods": p.ods, "name": p.name, "setting": p.setting},
        "format": _format(),
        "extract": {
            "frequency": "daily",
            "at": "02:00",
            "contains": "contacts of the previous day",
        },
        "resource": "Encounter",
        "row_id": {"column": "Contact ID"},
        "patient": {
            "nhs_number": {"column": "NHS Number", "system": NHS_NUMBER_SYSTEM, "remove": [" "]},
            "local_id": {
                "column": "Local Patient ID",
                "system": local_identifier_system(p.ods, "patient-id"),
            },
            "family": {"column": "Surname"},
            "given": {"column": "Forename"},
            "birth_date": {"column": "Date of Birth", "format": "%d/%m/%Y"},
            "gender": {"column": "Gender", "map": {"Male": "male", "Female": "female"}},
            "address_postcode": {"column": "Postcode"},
            "general_practitioner": {
                "column": "Registered GP Practice",
                "system": ODS_ORGANIZATION_SYSTEM,
            },
        },
        "elements": [
            {
                "path": "Encounter.period.start",
                "columns": ["Contact Date", "Contact Time"],
                "format": "%d/%m/%Y %H:%M",
            },
            {
                "path": "Encounter.status",
                "column": "Attendance",
                "map": {
                    "Attended": "finished",
                    "DNA": "cancelled",
                    "Cancelled by patient": "cancelled",
                },
            },
            {
                "path": "Encounter.class",
                "column": "Contact Type",
                "system": "http://terminology.hl7.org/CodeSystem/v3-ActCode",
                "map": {
                    "Face to face - home": "HH",
                    "Face to face - clinic": "AMB",
                    "Telephone": "VR",
                },
            },
            {"path": "Encounter.serviceType.text", "column": "Team"},
            {"path": "Encounter.participant.type.text", "column": "Staff Role"},
            {
                "path": "Encounter.participant.individual.identifier",
                "column": "Staff ID",
                "system": NMC_SYSTEM,
            },
            {
                "path": "Encounter.serviceProvider.identifier",
                "value": p.ods,
                "system": ODS_ORGANIZATION_SYSTEM,
            },
        ],
    }


def _mental_health_mapping(p: Provider) -> dict[str, Any]:
    return {
        "feed": p.feed_id,
        "provider": {"ods": p.ods, "name": p.name, "setting": p.setting},
        "format": _format(),
        "extract": {
            "frequency": "daily",
            "at": "02:00",
            "contains": "activity of the previous day",
        },
        "resource": "Encounter",
        "row_id": {"column": "ActivityID"},
        "patient": {
            "nhs_number": {"column": "NHSNumber", "system": NHS_NUMBER_SYSTEM},
            "local_id": {
                "column": "ClientID",
                "system": local_identifier_system(p.ods, "client-id"),
            },
            "birth_date": {"column": "DOB", "format": "%Y-%m-%d"},
            "gender": {
                "column": "Sex",
                "map": {"1": "male", "2": "female", "9": "unknown"},
                "code_system": "NHS Data Dictionary PERSON STATED GENDER CODE",
            },
        },
        "elements": [
            {
                "path": "Encounter.period.start",
                "column": "ActivityDateTime",
                "format": "%Y-%m-%dT%H:%M",
            },
            {
                "path": "Encounter.status",
                "column": "Outcome",
                "map": {"ATT": "finished", "DNA": "cancelled", "CAN": "cancelled"},
            },
            {
                "path": "Encounter.class",
                "column": "ContactMedium",
                "system": "http://terminology.hl7.org/CodeSystem/v3-ActCode",
                "map": {"F2F": "AMB", "TEL": "VR"},
            },
            {
                "path": "Encounter.serviceType.text",
                "column": "Service",
                "map": {"CMHT": "Community mental health team", "Memory Service": "Memory service"},
            },
            {
                "path": "Encounter.extension[care-programme-approach].valueBoolean",
                "column": "CPA",
                "url": "https://fhir.joinedup.nhs.uk/StructureDefinition/care-programme-approach",
                "map": {"Y": True, "N": False},
            },
            {
                "path": "Encounter.serviceProvider.identifier",
                "value": p.ods,
                "system": ODS_ORGANIZATION_SYSTEM,
            },
        ],
    }


def _social_care_mapping(p: Provider) -> dict[str, Any]:
    return {
        "feed": p.feed_id,
        "provider": {"ods": p.ods, "name": p.name, "setting": p.setting},
        "format": _format(),
        "extract": {
            "frequency": "weekly",
            "at": "Monday 03:00",
            "contains": "packages started, reviewed or ended since the last extract",
        },
        "resource": "EpisodeOfCare",
        "row_id": {
            "column": "Package ID",
            "note": "one resource per package; later rows update it",
        },
        "patient": {
            "nhs_number": {"column": "NHS No", "system": NHS_NUMBER_SYSTEM, "often_blank": True},
            "local_id": {
                "column": "Person ID",
                "system": local_identifier_system(p.ods, "person-id"),
            },
            "family": {"column": "Surname"},
            "given": {"column": "First Name"},
            "birth_date": {"column": "Date of Birth", "format": "%d-%b-%Y"},
        },
        "elements": [
            {
                "path": "EpisodeOfCare.status",
                "column": "Record Type",
                "map": {"New": "active", "Review": "active", "Ended": "finished"},
            },
            {
                "path": "EpisodeOfCare.type",
                "column": "Service Type",
                "system": "https://fhir.joinedup.nhs.uk/CodeSystem/social-care-service",
                "map": {
                    "Home Care": "home-care",
                    "Residential Care": "residential-care",
                    "Nursing Care": "nursing-care",
                    "Reablement": "reablement",
                },
            },
            {
                "path": "EpisodeOfCare.period.start",
                "column": "Service Start Date",
                "format": "%d-%b-%Y",
            },
            {
                "path": "EpisodeOfCare.period.end",
                "column": "Service End Date",
                "format": "%d-%b-%Y",
            },
            {
                "path": "EpisodeOfCare.extension[planned-hours].valueDecimal",
                "column": "Planned Hours Per Week",
                "url": "https://fhir.joinedup.nhs.uk/StructureDefinition/planned-hours-per-week",
            },
            {
                "path": "EpisodeOfCare.meta.lastUpdated",
                "column": "Record Date",
                "format": "%d-%b-%Y",
            },
            {
                "path": "EpisodeOfCare.managingOrganization.identifier",
                "value": p.ods,
                "system": ODS_ORGANIZATION_SYSTEM,
            },
        ],
    }
