"""Ground truth written beside the feeds: per patient outcomes and oracle risk, every true event,
and the alerts the alert rules should raise.

``truth/patients.csv``: one row per patient, columns ``PATIENT_COLUMNS``. Horizons start at the
index date (``index_date`` column). For each horizon H in ``HORIZONS`` days:

* ``emergency_admission_<H>d``: 1 if the first emergency admission (A01 time) after the index date
  fell within H days, 0 if not, empty if the feeds end before the horizon does;
* ``oracle_risk_<H>d``: the hazard model's probability of that, knowing everything (the hidden
  frailty Z included); no model can do better on average;
* ``observable_risk_<H>d``: the same with Z replaced by its posterior given what the record shows
  (``hazard.observable_risk``): the best AUROC a model of the records can hope for.

Risks are cause-specific: death before admission is not a competing event in them, while the
observed outcome of someone who died first is 0.

``truth/alerts.ndjson``: one JSON object per alert, rules ``ALERT_RULES``; ``at`` is when the last
message the rule needs was first sent (the earliest moment a rule engine could fire),
``occurred_at`` the clinical time.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Final

from fhir_common.identifiers import resource_id
from joinedup.synth import clock as clk
from joinedup.synth import hazard
from joinedup.synth.clock import Clock
from joinedup.synth.events import Event, Kind
from joinedup.synth.person import Person
from joinedup.synth.timeline import AcuteStory
from joinedup.synth.world import Practice, World

HORIZONS: Final = (30, 90, 180, 365, 730)
#: Repeated hypoglycaemia: an ED attendance with hypoglycaemia that is at least the
#: ``HYPO_ALERT_MIN_COUNT``-th within ``HYPO_ALERT_WINDOW_DAYS`` days.
HYPO_ALERT_WINDOW_DAYS: Final = 90.0
HYPO_ALERT_MIN_COUNT: Final = 2
#: High-risk admission: an emergency admission after the index date of someone whose observable
#: one-year risk at the index date was at least this.
HIGH_RISK_THRESHOLD: Final = 0.25
ALERT_RULES: Final = {
    "recurrent-hypoglycaemia-ed": (
        f"ED attendance with hypoglycaemia, at least the {HYPO_ALERT_MIN_COUNT}nd within "
        f"{HYPO_ALERT_WINDOW_DAYS:g} days; notify the diabetes consultant and the GP practice"
    ),
    "high-risk-emergency-admission": (
        f"emergency admission of a patient whose observable 365-day risk at the index date was "
        f">= {HIGH_RISK_THRESHOLD}; notify the GP practice and the care coordinator if any"
    ),
}

PATIENT_COLUMNS: Final = (
    "patient_index",
    "nhs_number",
    "practice_ods",
    "mdg",
    "main_trust_ods",
    "age",
    "sex",
    "ethnic_category",
    "imd_decile",
    "diabetes_type",
    "insulin",
    "hba1c",
    "frailty",
    "smoking",
    "conditions",
    "coded_later",
    "care_coordinated",
    "frequent_hypo_attender",
    "admission_frailty_z",
    "admission_rate_base",
    "hypo_rate",
    "index_date",
    "emergency_admissions_prior_365d",
    *(f"oracle_risk_{h}d" for h in HORIZONS),
    *(f"observable_risk_{h}d" for h in HORIZONS),
    *(f"emergency_admission_{h}d" for h in HORIZONS),
    "first_emergency_admission_after_index",
    "emergency_admissions_after_index",
    "emergency_admissions",
    "ed_attendances",
    "hypoglycaemia_ed_attendances",
    "died_at",
)
_FRAILTY = ("fit", "mild", "moderate", "severe")
_SMOKING = {-1: "", 0: "never", 1: "ex", 2: "current"}


def _hypo_cumulative(person: Person, story: AcuteStory, start: float, length: float) -> float:
    """Hypoglycaemia attendances that end in admission, expected over [start, start+length]."""
    total = person.hypo_rate * length
    if story.frequent_spell is not None:
        begin, end = story.frequent_spell
        overlap = max(0.0, min(end, start + length) - max(begin, start))
        total += story.frequent_rate * overlap
    return hazard.HYPO_ADMITTED * total / 365.25


def risks(person: Person, story: AcuteStory, index_day: float) -> tuple[list[float], list[float]]:
    prior = [e.start for e in story.events if e.kind is Kind.EMERGENCY and e.start < index_day]
    oracle, observable = [], []
    for horizon in HORIZONS:
        general = hazard.general_cumulative_hazard(person.admission_rate, prior, index_day, horizon)
        hypo = _hypo_cumulative(person, story, index_day, horizon)
        oracle.append(hazard.oracle_risk(general, person.admission_frailty, hypo))
        observable.append(
            hazard.observable_risk(
                general, hypo, story.general_before_index, story.exposure_before_index
            )
        )
    return oracle, observable


def hypo_attendances(events: Sequence[Event]) -> list[Event]:
    return sorted(
        (e for e in events if e.hypoglycaemia and e.ed_arrival is not None),
        key=lambda e: e.ed_arrival or 0.0,
    )


def patient_row(
    person: Person,
    nhs: str,
    practice: Practice,
    world: World,
    story: AcuteStory,
    events: Sequence[Event],
    clock: Clock,
    index_day: float,
    window: float,
    observable: list[float],
    oracle: list[float],
) -> list[Any]:
    emergencies = [e for e in events if e.kind is Kind.EMERGENCY]
    after = [e.start for e in emergencies if e.start >= index_day]
    first = min(after) if after else None
    outcomes: list[Any] = []
    for horizon in HORIZONS:
        if first is not None and first < index_day + horizon:
            outcomes.append(1)
        elif index_day + horizon > window and (story.died_at is None or story.died_at > window):
            outcomes.append("")  # the feeds end before the horizon does
        else:
            outcomes.append(0)
    prior = sum(1 for e in emergencies if index_day - 365.0 <= e.start < index_day)
    ed = sum(1 for e in events if e.ed_arrival is not None)
    return [
        person.index,
        nhs,
        practice.ods,
        practice.mdg,
        world.hospitals[person.main_trust].ods,
        person.age,
        "female" if person.female else "male",
        person.ethnicity,
        person.imd_decile,
        person.diabetes_type or "",
        int(person.insulin),
        "" if person.hba1c is None else f"{person.hba1c:g}",
        _FRAILTY[person.frailty],
        _SMOKING[person.smoking],
        ";".join(sorted(person.conditions)),
        ";".join(sorted(person.uncoded)),
        int(person.care_coordinated),
        int(person.frequent_attender),
        f"{person.admission_frailty:.4f}",
        f"{person.admission_rate:.5f}",
        f"{person.hypo_rate:.5f}",
        clock.date(index_day),
        prior,
        *(f"{r:.6f}" for r in oracle),
        *(f"{r:.6f}" for r in observable),
        *outcomes,
        "" if first is None else clk.iso(clock.epoch(first)),
        len(after),
        len(emergencies),
        ed,
        len(hypo_attendances(events)),
        "" if story.died_at is None else clk.iso(clock.epoch(story.died_at)),
    ]


def alerts(
    person: Person,
    nhs: str,
    practice: Practice,
    world: World,
    events: Sequence[Event],
    clock: Clock,
    index_day: float,
    observable_365: float,
) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []
    gp_feed = practice.feed_id
    consultant = world.diabetes_consultant(person.main_trust, person.index)
    consultant_role = f"role-{consultant.local_id}"
    coordinator = world.care_coordinator(practice, person.index)
    coordinator_role = f"role-{coordinator.local_id}"

    def notify(*, consultant_too: bool, coordinator_too: bool) -> dict[str, Any]:
        who: dict[str, Any] = {"gp_practice": practice.ods}
        if consultant_too and person.diabetes_type:
            who["diabetes_consultant"] = {
                "local_id": f"PractitionerRole/{consultant_role}",
                "id": "PractitionerRole/"
                + resource_id(gp_feed, "PractitionerRole", consultant_role),
            }
        if coordinator_too and person.care_coordinated:
            who["care_coordinator"] = {
                "local_id": f"PractitionerRole/{coordinator_role}",
                "id": "PractitionerRole/"
                + resource_id(gp_feed, "PractitionerRole", coordinator_role),
            }
        return who

    attendances = hypo_attendances(events)
    for i, attendance in enumerate(attendances):
        arrival = attendance.ed_arrival or 0.0
        window = [
            a
            for a in attendances[: i + 1]
            if arrival - HYPO_ALERT_WINDOW_DAYS < (a.ed_arrival or 0.0) <= arrival
        ]
        if len(window) < HYPO_ALERT_MIN_COUNT:
            continue
        needed = window[-HYPO_ALERT_MIN_COUNT:]
        announced = [a.ed_first_sent or 0 for a in needed]
        found.append(
            {
                "rule": "recurrent-hypoglycaemia-ed",
                "patient_index": person.index,
                "nhs_number": nhs,
                "occurred_at": clk.iso(clock.epoch(arrival)),
                "at": clk.iso(max(announced)),
                "trust": world.hospitals[attendance.trust].ods,
                "count_in_window": len(window),
                "admitted": attendance.kind is Kind.EMERGENCY,
                "notify": notify(consultant_too=True, coordinator_too=False),
            }
        )
    if observable_365 >= HIGH_RISK_THRESHOLD:
        for event in events:
            if event.kind is Kind.EMERGENCY and event.start >= index_day and event.first_sent:
                local_hour = (event.start % 1.0) * 24.0
                found.append(
                    {
                        "rule": "high-risk-emergency-admission",
                        "patient_index": person.index,
                        "nhs_number": nhs,
                        "occurred_at": clk.iso(clock.epoch(event.start)),
                        "at": clk.iso(int(event.first_sent)),
                        "trust": world.hospitals[event.trust].ods,
                        "observable_risk_365d": round(observable_365, 6),
                        "overnight": local_hour >= 20.0 or local_hour < 8.0,
                        "admission_method": str(event.method),
                        "notify": notify(consultant_too=False, coordinator_too=True),
                    }
                )
    return found


def event_record(
    person: Person, nhs: str, event: Event, clock: Clock, world: World
) -> dict[str, Any]:
    record: dict[str, Any] = {
        "patient_index": person.index,
        "nhs_number": nhs,
        "event": str(event.kind),
        "serial": event.serial,
        "start": clk.iso(clock.epoch(event.start)),
        "end": None if math.isinf(event.end) else clk.iso(clock.epoch(event.end)),
    }
    if event.trust >= 0:
        record["trust"] = world.hospitals[event.trust].ods
    if event.method:
        record["admission_method"] = str(event.method)
    if event.diagnosis:
        record["diagnosis"] = event.diagnosis
    if event.ed_arrival is not None:
        record["ed_arrival"] = clk.iso(clock.epoch(event.ed_arrival))
    if event.died:
        record["died"] = True
    if event.detail:
        record["detail"] = event.detail
    if event.outcome:
        record["outcome"] = event.outcome
    if event.newly_coded:
        record["newly_coded"] = list(event.newly_coded)
    if event.observations:
        record["observations"] = dict(event.observations)
    if event.first_sent is not None:
        record["first_sent"] = clk.iso(int(event.first_sent))
    return record
