"""A person's acute story: emergency and elective admissions, emergency department attendances
(hypoglycaemia among them) and death, drawn from the hazard model as competing risks.

Rates are piecewise constant: they change only when a past emergency admission leaves the
365-day window of ``hazard.PRIOR_ADMISSION_HR`` or a frequent attender's spell begins or ends. So
the loop draws the next event exactly (an exponential waiting time at the summed rate, then which
process it was), with no thinning and no time steps. While someone is in hospital nothing else can
happen to them, which is also what the oracle assumes (``hazard.py``).
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

from joinedup.synth import hazard, vocabulary
from joinedup.synth.events import Event, Kind
from joinedup.synth.person import Person

YEAR = 365.25
HOUR = 1.0 / 24.0

#: Frequent attenders have a spell of this many days with this many hypo attendances a year.
FREQUENT_SPELL_DAYS = (120.0, 240.0)
FREQUENT_SPELL_RATE = (25.0, 45.0)
#: A third of emergency admissions go home the same day (Health Foundation 2018).
ZERO_DAY_SHARE = 0.33


@dataclass(slots=True)
class AcuteStory:
    events: list[Event]
    died_at: float | None
    general_before_index: int  # emergency admissions of the hazard model before the index date
    exposure_before_index: float  # cumulative hazard without Z up to the index date (years)
    frequent_spell: tuple[float, float] | None
    frequent_rate: float
    serial: int  # next free event serial


def _weighted(rng: random.Random, options: list[tuple[str, float]]) -> str:
    total = sum(w for _, w in options)
    u = rng.random() * total
    for name, weight in options:
        u -= weight
        if u <= 0:
            return name
    return options[-1][0]


def _diagnosis(person: Person, rng: random.Random) -> str:
    options = list(vocabulary.GENERAL_DIAGNOSES)
    for condition, (diagnosis, weight) in vocabulary.DIAGNOSIS_BY_CONDITION.items():
        if condition in person.conditions:
            options.append((diagnosis, weight))
    if person.age >= 70:
        options += vocabulary.ELDERLY_DIAGNOSES
    return _weighted(rng, options)


def _trust(person: Person, rng: random.Random, hospitals: int) -> int:
    return person.main_trust if rng.random() < 0.9 else rng.randrange(hospitals)


def _length_of_stay(person: Person, rng: random.Random) -> float:
    if rng.random() < ZERO_DAY_SHARE:
        return rng.uniform(3.0, 10.0) * HOUR
    mu = math.log(3.5) + 0.15 * person.frailty + (0.3 if person.age >= 80 else 0.0)
    return min(max(rng.lognormvariate(mu, 0.8), 1.0), 60.0)


def _dies_in_hospital(person: Person, rng: random.Random) -> bool:
    p = 0.015 * (2.5 if person.age >= 80 else 1.0) * (1.0, 1.5, 2.0, 3.0)[person.frailty]
    return rng.random() < p


def _emergency_admission(
    person: Person,
    rng: random.Random,
    t: float,
    serial: int,
    hospitals: int,
    *,
    method: int | None = None,
    diagnosis: str | None = None,
    ed_arrival: float | None = None,
) -> Event:
    if method is None:
        method = int(_weighted(rng, [(str(m), w) for m, w in hazard.ADMISSION_ROUTE]))
    if method == 21 and ed_arrival is None:
        ed_arrival = t - rng.uniform(1.5, 6.0) * HOUR
    stay = _length_of_stay(person, rng)
    transfers: tuple[float, ...] = ()
    if stay > 2.0 and rng.random() < 0.35:
        moves = 2 if rng.random() < 0.3 else 1
        transfers = tuple(sorted(t + rng.uniform(0.15, 0.8) * stay for _ in range(moves)))
    return Event(
        Kind.EMERGENCY,
        start=t,
        end=t + stay,
        serial=serial,
        trust=_trust(person, rng, hospitals),
        method=method,
        diagnosis=diagnosis or _diagnosis(person, rng),
        ed_arrival=ed_arrival,
        transfers=transfers,
        died=_dies_in_hospital(person, rng),
    )


def acute_story(
    person: Person, rng: random.Random, window: float, index_day: float, hospitals: int
) -> AcuteStory:
    """Simulate [0, window) days; ``index_day`` is where the ground-truth horizons start."""
    events: list[Event] = []
    admissions: list[float] = []  # days of every emergency admission, for the prior-use HR
    spell: tuple[float, float] | None = None
    spell_rate = 0.0
    if person.frequent_attender:
        length = rng.uniform(*FREQUENT_SPELL_DAYS)
        begin = rng.uniform(0.0, max(0.0, window - length))
        spell, spell_rate = (begin, begin + length), rng.uniform(*FREQUENT_SPELL_RATE)
    serial = 0
    before, exposure = 0, 0.0
    died_at: float | None = None
    z = person.admission_frailty
    t = 0.0
    while t < window:
        count = sum(1 for a in admissions if a > t - hazard.PRIOR_WINDOW_DAYS)
        general = person.admission_rate * hazard.prior_hr(count)
        in_spell = spell is not None and spell[0] <= t < spell[1]
        hypo = person.hypo_rate + (spell_rate if in_spell else 0.0)
        rates = (general * z, hypo, person.ed_rate, person.elective_rate, person.mortality_rate)
        total = sum(rates)
        change = window
        for a in admissions:
            if t < a + hazard.PRIOR_WINDOW_DAYS < change:
                change = a + hazard.PRIOR_WINDOW_DAYS
        if spell is not None:
            for edge in spell:
                if t < edge < change:
                    change = edge
        wait = rng.expovariate(total) * YEAR if total > 0 else math.inf
        if t < index_day:
            exposure += general * (min(t + wait, change, index_day) - t) / YEAR
        if t + wait >= change:
            t = change
            continue
        t += wait
        u = rng.random() * total
        if u < rates[0]:
            event = _emergency_admission(person, rng, t, serial, hospitals)
            if t < index_day:
                before += 1
        elif u < rates[0] + rates[1]:
            event = _hypoglycaemia(person, rng, t, serial, hospitals)
        elif u < rates[0] + rates[1] + rates[2]:
            event = _ed_only(person, rng, t, serial, hospitals)
        elif u < total - rates[4]:
            event = _elective(person, rng, t, serial, hospitals)
        else:
            events.append(Event(Kind.DEATH, t, t, serial=serial, detail="community"))
            died_at = t
            break
        serial += 1
        events.append(event)
        if event.kind is Kind.EMERGENCY:
            admissions.append(event.start)
        t = event.end
        if event.died:
            events.append(
                Event(Kind.DEATH, t, t, serial=serial, trust=event.trust, detail="hospital")
            )
            serial += 1
            died_at = t
            break
    return AcuteStory(events, died_at, before, exposure, spell, spell_rate, serial + 1)


def _hypoglycaemia(
    person: Person, rng: random.Random, t: float, serial: int, hospitals: int
) -> Event:
    if rng.random() < hazard.HYPO_ADMITTED:
        admit = t + rng.uniform(2.0, 5.0) * HOUR
        return _emergency_admission(
            person,
            rng,
            admit,
            serial,
            hospitals,
            method=21,
            diagnosis="hypoglycaemia",
            ed_arrival=t,
        )
    return Event(
        Kind.ED,
        start=t,
        end=t + rng.uniform(2.0, 6.0) * HOUR,
        serial=serial,
        trust=_trust(person, rng, hospitals),
        diagnosis="hypoglycaemia",
        ed_arrival=t,
    )


def _ed_only(person: Person, rng: random.Random, t: float, serial: int, hospitals: int) -> Event:
    return Event(
        Kind.ED,
        start=t,
        end=t + rng.uniform(1.5, 7.0) * HOUR,
        serial=serial,
        trust=_trust(person, rng, hospitals),
        diagnosis=_weighted(rng, list(vocabulary.ED_ONLY_DIAGNOSES)),
        ed_arrival=t,
    )


def _elective(person: Person, rng: random.Random, t: float, serial: int, hospitals: int) -> Event:
    day = math.floor(t) + 7.5 * HOUR + rng.uniform(0.0, 3.0) * HOUR  # admitted in the morning
    stay = rng.uniform(4.0, 9.0) * HOUR if rng.random() < 0.4 else rng.uniform(1.0, 4.0)
    return Event(
        Kind.ELECTIVE,
        start=max(day, t),
        end=max(day, t) + stay,
        serial=serial,
        trust=_trust(person, rng, hospitals),
        method=11 if rng.random() < 0.7 else 12,
        diagnosis="",
        detail="general-surgery",
    )
