"""The synthetic population meets its documented targets (docs/synthetic-population.md)."""

from __future__ import annotations

import numpy as np
import pytest

from fhir_common.identifiers import is_valid_nhs_number
from joinedup.synth import identity, targets
from joinedup.synth.population import Cohort, sample_practice
from joinedup.synth.world import build_world

SEED = 20260101


@pytest.fixture(scope="module")
def cohort() -> Cohort:
    """About 16,000 people: three binomial standard errors of the rarest targets fit inside
    their tolerances, and sampling takes a fraction of a second."""
    world = build_world(SEED, 16_000)
    parts = [sample_practice(SEED, p, len(world.hospitals)) for p in world.practices]
    return Cohort(
        index=np.concatenate([c.index for c in parts]),
        age=np.concatenate([c.age for c in parts]),
        birth_offset_days=np.concatenate([c.birth_offset_days for c in parts]),
        female=np.concatenate([c.female for c in parts]),
        ethnicity=np.concatenate([c.ethnicity for c in parts]),
        imd_decile=np.concatenate([c.imd_decile for c in parts]),
        conditions={
            k: np.concatenate([c.conditions[k] for c in parts]) for k in targets.CONDITIONS
        },
        coded_at_start={
            k: np.concatenate([c.coded_at_start[k] for c in parts]) for k in targets.CONDITIONS
        },
        insulin=np.concatenate([c.insulin for c in parts]),
        hba1c=np.concatenate([c.hba1c for c in parts]),
        frailty=np.concatenate([c.frailty for c in parts]),
        smoking=np.concatenate([c.smoking for c in parts]),
        admission_frailty=np.concatenate([c.admission_frailty for c in parts]),
        ed_propensity=np.concatenate([c.ed_propensity for c in parts]),
        hypo_rate=np.concatenate([c.hypo_rate for c in parts]),
        frequent_attender=np.concatenate([c.frequent_attender for c in parts]),
        main_trust=np.concatenate([c.main_trust for c in parts]),
    )


def _observed(cohort: Cohort) -> dict[str, float]:
    diabetes = cohort.diabetes
    over_65 = cohort.age >= 65
    white = np.isin(cohort.ethnicity, [0, 1, 2])  # A, B, C
    return {
        "share aged 75 and over": float((cohort.age >= 75).mean()),
        "share aged 65 and over": float(over_65.mean()),
        "share female": float(cohort.female.mean()),
        "diabetes prevalence (all ages)": float(diabetes.mean()),
        "type 1 share of diabetes": float(cohort.conditions["diabetes_t1"].sum() / diabetes.sum()),
        "insulin-treated share of diabetes": float(cohort.insulin.sum() / diabetes.sum()),
        "share of over-65s frail (eFI mild or worse)": float((cohort.frailty[over_65] > 0).mean()),
        "COPD prevalence": float(cohort.conditions["copd"].mean()),
        "heart failure prevalence": float(cohort.conditions["heart_failure"].mean()),
        "dementia prevalence": float(cohort.conditions["dementia"].mean()),
        "serious mental illness prevalence": float(cohort.conditions["smi"].mean()),
        "share White (A-C)": float(white.mean()),
    }


@pytest.mark.parametrize("target", targets.CRUDE_TARGETS, ids=lambda t: t.name)
def test_population_meets_target(cohort: Cohort, target: targets.Target) -> None:
    observed = _observed(cohort)[target.name]
    assert target.met_by(observed), (
        f"{target.name}: {observed:.4f} not {target.value}±{target.tolerance}"
    )


def test_targets_agree_with_the_tables_they_come_from() -> None:
    """The crude targets written in targets.py are what the age-specific tables imply."""
    share = np.array(targets.AGE_BAND_SHARE)
    over_75 = share[7] / 2 + share[8:].sum()
    assert abs(over_75 - 0.059) < 0.002
    for name, target in (
        ("copd", "COPD prevalence"),
        ("heart_failure", "heart failure prevalence"),
        ("dementia", "dementia prevalence"),
        ("smi", "serious mental illness prevalence"),
    ):
        implied = float(share @ np.array(targets.CONDITION_PREVALENCE[name]))
        value = next(t.value for t in targets.CRUDE_TARGETS if t.name == target)
        assert abs(implied - value) < 0.0005, name


def test_diabetes_rises_with_age(cohort: Cohort) -> None:
    diabetes = cohort.diabetes
    young = diabetes[(cohort.age >= 20) & (cohort.age < 40)].mean()
    middle = diabetes[(cohort.age >= 40) & (cohort.age < 60)].mean()
    older = diabetes[cohort.age >= 60].mean()
    assert young < middle < older


def test_conditions_cluster_in_the_same_people(cohort: Cohort) -> None:
    """Multimorbidity: someone with COPD has heart failure more often than the population."""
    copd, hf = cohort.conditions["copd"], cohort.conditions["heart_failure"]
    old = cohort.age >= 60
    assert hf[old & copd].mean() > 1.3 * hf[old].mean()


def test_practices_and_mdgs_have_the_pilot_shape() -> None:
    world = build_world(SEED, 500_000)
    sizes = [p.list_size for p in world.practices]
    assert sum(sizes) == 500_000
    assert 4_500 < np.mean(sizes) < 6_500
    assert all(5 <= len(members) <= 17 for members in world.mdgs.values())
    assert len({p.ods for p in world.practices}) == len(world.practices)
    feeds = world.feeds()
    assert len({f.id for f in feeds}) == len(feeds)
    assert {f.kind for f in feeds} == {"fhir", "hl7v2", "csv"}
    assert all(f.sender == f.ods for f in feeds if f.kind == "hl7v2")


def test_nhs_numbers_are_valid_unique_and_in_the_test_range() -> None:
    numbers = [identity.nhs_number(i) for i in range(0, 900_000, 97)]
    assert len(set(numbers)) == len(numbers)
    assert all(is_valid_nhs_number(n) and n.startswith("999") for n in numbers)
    assert not is_valid_nhs_number(identity.corrupt_check_digit(numbers[0]))


def test_frequent_attenders_in_every_practice_with_insulin_users(cohort: Cohort) -> None:
    assert cohort.frequent_attender.sum() >= 3
    assert cohort.insulin[cohort.frequent_attender].all()
