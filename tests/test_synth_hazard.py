"""The ground-truth hazard model behaves as documented: rates near their targets, higher-risk
groups admitted more, oracle risks calibrated and discriminating, frequent hypoglycaemia
attenders present."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest

from joinedup.synth import targets, truth
from joinedup.synth.events import Kind
from joinedup.synth.person import Person, people
from joinedup.synth.population import sample_practice
from joinedup.synth.rng import patient_random
from joinedup.synth.timeline import AcuteStory, acute_story
from joinedup.synth.world import build_world

SEED = 77
WINDOW = 730.5
INDEX_DAY = 365.0


@dataclass
class Outcomes:
    people: list[Person]
    stories: list[AcuteStory]
    oracle: np.ndarray  # 365-day oracle risk
    observable: np.ndarray
    admitted: np.ndarray  # first emergency admission within 365 days of the index date


@pytest.fixture(scope="module")
def outcomes() -> Outcomes:
    world = build_world(SEED, 24_000)
    persons: list[Person] = []
    stories: list[AcuteStory] = []
    oracle, observable, admitted = [], [], []
    for practice in world.practices:
        for person in people(sample_practice(SEED, practice, len(world.hospitals))):
            story = acute_story(person, patient_random(SEED, person.index), WINDOW, INDEX_DAY, 3)
            o, b = truth.risks(person, story, INDEX_DAY)
            persons.append(person)
            stories.append(story)
            oracle.append(o[3])
            observable.append(b[3])
            admitted.append(
                any(
                    e.kind is Kind.EMERGENCY and INDEX_DAY <= e.start < INDEX_DAY + 365
                    for e in story.events
                )
            )
    return Outcomes(persons, stories, np.array(oracle), np.array(observable), np.array(admitted))


def _auroc(score: np.ndarray, label: np.ndarray) -> float:
    order = np.argsort(score, kind="stable")
    ranks = np.empty(len(score))
    ranks[order] = np.arange(1, len(score) + 1)
    positives = label.sum()
    negatives = len(label) - positives
    return float((ranks[label].sum() - positives * (positives + 1) / 2) / (positives * negatives))


def _years_at_risk(story: AcuteStory) -> float:
    return (story.died_at if story.died_at is not None else WINDOW) / 365.25


def test_emergency_admission_rate_near_target(outcomes: Outcomes) -> None:
    admissions = sum(
        sum(e.kind is Kind.EMERGENCY for e in story.events) for story in outcomes.stories
    )
    rate = admissions / sum(_years_at_risk(s) for s in outcomes.stories)
    target = next(t for t in targets.OUTCOME_TARGETS if t.name.startswith("emergency admissions"))
    assert target.met_by(rate), rate


def test_adults_admitted_within_a_year_near_target(outcomes: Outcomes) -> None:
    adults = np.array([p.age >= 18 for p in outcomes.people])
    share = float(outcomes.admitted[adults].mean())
    target = next(t for t in targets.OUTCOME_TARGETS if t.name.startswith("adults"))
    assert target.met_by(share), share


def test_higher_risk_groups_are_admitted_more(outcomes: Outcomes) -> None:
    frailty = np.array([p.frailty for p in outcomes.people])
    old = np.array([p.age >= 65 for p in outcomes.people])
    by_frailty = [outcomes.admitted[old & (frailty == level)].mean() for level in (0, 1, 2)]
    assert by_frailty[0] < by_frailty[1] < by_frailty[2]
    deciles = np.quantile(outcomes.oracle, [0.5, 0.9])
    low = outcomes.admitted[outcomes.oracle < deciles[0]].mean()
    high = outcomes.admitted[outcomes.oracle >= deciles[1]].mean()
    assert high > 5 * low
    prior = np.array([s.general_before_index for s in outcomes.stories])
    assert outcomes.admitted[prior >= 1].mean() > 2 * outcomes.admitted[prior == 0].mean()


def test_oracle_risk_is_calibrated_and_discriminates(outcomes: Outcomes) -> None:
    alive = np.array([s.died_at is None or s.died_at > INDEX_DAY for s in outcomes.stories])
    oracle, observable, admitted = (
        outcomes.oracle[alive],
        outcomes.observable[alive],
        outcomes.admitted[alive],
    )
    # deaths before admission lower the observed rate a little below the cause-specific risk
    assert 0.8 * oracle.mean() < admitted.mean() < 1.1 * oracle.mean()
    assert 0.8 * observable.mean() < admitted.mean() < 1.1 * observable.mean()
    best, achievable = _auroc(oracle, admitted), _auroc(observable, admitted)
    assert 0.7 < achievable <= best + 0.01 < 0.95


def test_frequent_hypoglycaemia_attenders_exist(outcomes: Outcomes) -> None:
    most_in_180_days = 0
    for story in outcomes.stories:
        arrivals = sorted(e.ed_arrival for e in story.events if e.hypoglycaemia and e.ed_arrival)
        for i, first in enumerate(arrivals):
            within = sum(1 for a in arrivals[i:] if a - first <= 180)
            most_in_180_days = max(most_in_180_days, within)
    assert most_in_180_days >= 8


def test_hypoglycaemia_attendances_come_from_insulin_users(outcomes: Outcomes) -> None:
    for person, story in zip(outcomes.people, outcomes.stories, strict=True):
        if any(e.hypoglycaemia for e in story.events):
            assert person.insulin
