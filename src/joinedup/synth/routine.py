"""Planned and routine care around the acute story: GP consultations (with the problem-list
entries, results and prescriptions they record), HbA1c tests, outpatient clinics, community and
mental-health contacts and social-care packages. Nothing here changes the hazard of an emergency
admission; it is the record a risk model and a clinician would read.
"""

from __future__ import annotations

import math
import random

from joinedup.synth.events import Event, Kind
from joinedup.synth.person import Person
from joinedup.synth.timeline import HOUR, YEAR, AcuteStory

#: Post-discharge GP follow-up after an emergency admission (share, earliest and latest day).
FOLLOW_UP = (0.6, 3.0, 14.0)
DNA_SHARE = 0.08  # did not attend (community and mental-health appointments)
CANCELLED_SHARE = 0.04


class Calendar:
    """Moves times onto working days and hours: the feeds' start day is ``weekday0`` (0 = Mon)."""

    def __init__(self, weekday0: int) -> None:
        self.weekday0 = weekday0

    def working(self, t: float, rng: random.Random, opens: float, closes: float) -> float:
        day = math.floor(t)
        weekday = (self.weekday0 + day) % 7
        if weekday >= 5:
            day += 7 - weekday
        return day + (opens + rng.random() * (closes - opens)) * HOUR


def _poisson_times(
    rng: random.Random, rate_per_year: float, start: float, end: float
) -> list[float]:
    times: list[float] = []
    if rate_per_year <= 0:
        return times
    t = start
    while True:
        t += rng.expovariate(rate_per_year) * YEAR
        if t >= end:
            return times
        times.append(t)


def _periodic(rng: random.Random, every: float, jitter: float, end: float) -> list[float]:
    times: list[float] = []
    t = rng.uniform(0.0, every)
    while t < end:
        times.append(max(0.0, t + rng.uniform(-jitter, jitter)))
        t += every
    return times


def gp_rate(person: Person) -> float:
    """GP consultations a year: about five for an average adult, many more with frailty."""
    rate = 1.5 + 0.7 * len(person.conditions) + (0.0, 1.0, 2.5, 4.0)[person.frailty]
    if person.age >= 75:
        rate += 1.5
    if person.age < 5:
        rate += 1.5
    if person.diabetes_type:
        rate += 1.0
    return rate


def routine_events(
    person: Person,
    rng: random.Random,
    story: AcuteStory,
    window: float,
    calendar: Calendar,
) -> list[Event]:
    end = story.died_at if story.died_at is not None else window
    stays = [(e.start, e.end) for e in story.events if e.kind in (Kind.EMERGENCY, Kind.ELECTIVE)]
    serial = story.serial

    def at_home(t: float) -> bool:
        return t < end and not any(a <= t <= b for a, b in stays)

    events: list[Event] = []

    def add(kind: Kind, t: float, **fields: object) -> Event:
        nonlocal serial
        event = Event(kind, t, t, serial=serial, **fields)  # type: ignore[arg-type]
        serial += 1
        events.append(event)
        return event

    # GP consultations, and a follow-up after most emergency discharges
    times = _poisson_times(rng, gp_rate(person), 0.0, end)
    for e in story.events:
        if e.kind is Kind.EMERGENCY and not e.died and rng.random() < FOLLOW_UP[0]:
            times.append(e.end + rng.uniform(FOLLOW_UP[1], FOLLOW_UP[2]))
    consultations = []
    for t in sorted(times):
        t = calendar.working(t, rng, 8.5, 18.0)
        if at_home(t):
            consultations.append(add(Kind.GP, t, observations=_gp_observations(person, rng)))
    # conditions not coded at the start reach the problem list at one of the consultations
    for name in sorted(person.uncoded):
        if consultations:
            chosen = consultations[rng.randrange(len(consultations))]
            chosen.newly_coded = (*chosen.newly_coded, name)

    if person.diabetes_type and person.hba1c is not None:
        drift = rng.uniform(-0.5, 0.5)
        for t in _periodic(rng, 182.0, 20.0, end):
            t = calendar.working(t, rng, 11.0, 17.0)
            if at_home(t):
                value = person.hba1c + drift * t / 30.0 + rng.gauss(0.0, 4.0)
                add(Kind.LAB, t, observations=(("hba1c", float(round(max(value, 30.0)))),))

    if person.insulin:
        for t in _periodic(rng, 182.0, 30.0, end):
            t = calendar.working(t, rng, 9.0, 17.0)
            if at_home(t):
                add(Kind.OUTPATIENT, t, trust=person.main_trust, detail="diabetic-medicine")
    if "heart_failure" in person.conditions:
        for t in _periodic(rng, 365.0, 60.0, end):
            t = calendar.working(t, rng, 9.0, 17.0)
            if at_home(t):
                add(Kind.OUTPATIENT, t, trust=person.main_trust, detail="cardiology")

    _community(person, rng, story, end, calendar, add, at_home)
    _mental_health(person, rng, end, calendar, add, at_home)
    _social_care(person, rng, story, end, add)
    return events


def _gp_observations(person: Person, rng: random.Random) -> tuple[tuple[str, float], ...]:
    if person.age < 18:
        return ()
    observations: list[tuple[str, float]] = []
    if rng.random() < (0.5 if "hypertension" in person.conditions else 0.15):
        systolic = rng.gauss(142.0 if "hypertension" in person.conditions else 124.0, 14.0)
        observations += [
            ("systolic-bp", float(round(systolic))),
            ("diastolic-bp", float(round(systolic * 0.6 + rng.gauss(0.0, 6.0)))),
        ]
    if rng.random() < 0.2:
        observations.append(("body-weight", round(rng.gauss(78.0, 15.0), 1)))
    return tuple(observations)


def _outcome(rng: random.Random) -> str:
    u = rng.random()
    if u < DNA_SHARE:
        return "did-not-attend"
    return "cancelled" if u < DNA_SHARE + CANCELLED_SHARE else "attended"


def _community(person, rng, story, end, calendar, add, at_home) -> None:  # type: ignore[no-untyped-def]
    teams: list[tuple[str, float, str]] = []  # (team, contacts a year, contact type)
    if person.frailty == 3 or (person.age >= 75 and person.frailty >= 2):
        teams.append(("district-nursing", 12.0, "home"))
    if person.care_coordinated:
        teams.append(("community-matron", 4.0, "home"))
    if person.insulin:
        teams.append(("diabetes-specialist-nursing", 1.0, "clinic"))
    for team, rate, contact in teams:
        for t in _poisson_times(rng, rate, 0.0, end):
            t = calendar.working(t, rng, 8.0, 18.0)
            if at_home(t):
                medium = "telephone" if rng.random() < 0.2 else contact
                add(Kind.COMMUNITY, t, detail=f"{team}|{medium}", outcome=_outcome(rng))
    if person.age >= 75:
        for e in story.events:
            if e.kind is Kind.EMERGENCY and not e.died and rng.random() < 0.3:
                t = e.end + rng.uniform(0.5, 3.0)
                if at_home(t):
                    add(Kind.COMMUNITY, t, detail="rapid-response|home", outcome="attended")


def _mental_health(person, rng, end, calendar, add, at_home) -> None:  # type: ignore[no-untyped-def]
    services: list[tuple[str, float]] = []
    if "smi" in person.conditions:
        services.append(("community-mental-health-team", 8.0))
    if "dementia" in person.conditions:
        services.append(("memory-service", 2.0))
    cpa = "smi" in person.conditions and rng.random() < 0.4
    for service, rate in services:
        for t in _poisson_times(rng, rate, 0.0, end):
            t = calendar.working(t, rng, 9.0, 17.0)
            if at_home(t):
                medium = "telephone" if rng.random() < 0.25 else "face-to-face"
                detail = f"{service}|{medium}|{'Y' if cpa else 'N'}"
                add(Kind.MENTAL_HEALTH, t, detail=detail, outcome=_outcome(rng))


def _social_care(person, rng, story, end, add) -> None:  # type: ignore[no-untyped-def]
    eligible = 0.0
    if person.frailty == 3:
        eligible = 0.6
    elif person.age >= 75 and (person.frailty == 2 or "dementia" in person.conditions):
        eligible = 0.3
    if eligible and rng.random() < eligible:
        u = rng.random()
        kind = "residential-care" if u < 0.1 else "nursing-care" if u < 0.15 else "home-care"
        hours = 0.0 if kind != "home-care" else float(rng.choice((5, 7, 10, 14, 21, 28)))
        starts_before = rng.random() < 0.7
        start = -rng.uniform(30.0, 3 * YEAR) if starts_before else rng.uniform(0.0, end)
        package = add(Kind.SOCIAL_CARE, start, detail=kind, outcome=f"{hours:g}")
        package.end = end if story.died_at is not None else math.inf
    if person.age >= 75 and person.frailty >= 1:
        for e in story.events:
            if e.kind is Kind.EMERGENCY and not e.died and rng.random() < 0.3:
                package = add(Kind.SOCIAL_CARE, e.end + 0.5, detail="reablement", outcome="10")
                package.end = min(e.end + 0.5 + 42.0, end)
