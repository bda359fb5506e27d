"""The ground-truth hazard model: how often each person is admitted as an emergency, attends the
emergency department, is admitted electively or dies, and the oracle risk that follows from it.

Emergency admissions follow a proportional-hazards model in the spirit of QAdmissions and SPARRA:

    rate(t) = base(age band) x HR(sex) x HR(ethnicity) x HR(deprivation) x HR(smoking)
              x prod HR(condition) x HR(frailty) x HR(HbA1c, insulin) x HR(prior admissions at t)
              x Z                                   (Z ~ Gamma(2, 1/2): what no record shows)

plus hypoglycaemia attendances that end in admission (``HYPO_ADMITTED``). Prior admissions are
those in the trailing 365 days, so one admission makes the next likelier for a year, as in every
admission risk score. Hazard ratios are taken from QAdmissions (ethnicity, smoking, prior
admissions; Hippisley-Cox & Coupland 2013) and the electronic frailty index (Clegg et al. 2016)
where published; the rest are our estimates and are marked so.

Covariates are fixed at the start of the feeds (conditions recorded later were there all along),
so the hazard of a first admission after the index date is known exactly, and so is the oracle
risk (``oracle_risk``). ``observable_risk`` is what the best possible model could know: Z is
replaced by its posterior given the admissions seen before the index date.
"""

from __future__ import annotations

import math
from typing import Final

import numpy as np

from joinedup.synth import targets
from joinedup.synth.population import ADMISSION_FRAILTY_SHAPE, Cohort

#: Emergency admissions per year of a reference person (no conditions, fit, never smoked, White,
#: median deprivation) by age band. Calibrated so that the population's crude rate lands near
#: ``targets.OUTCOME_TARGETS`` (our estimate from HES age profiles).
BASE_ADMISSION_RATE: Final = (0.045, 0.016, 0.025, 0.025, 0.027, 0.034, 0.045, 0.067, 0.105, 0.155)

CONDITION_HR: Final = {  # our estimates, shrunk because frailty carries part of the same signal
    "diabetes_t1": 1.5,
    "diabetes_t2": 1.25,
    "copd": 1.7,
    "heart_failure": 1.7,
    "ckd": 1.3,
    "dementia": 1.4,
    "smi": 1.6,
    "atrial_fibrillation": 1.2,
    "hypertension": 1.05,
    "asthma": 1.2,
    "cancer": 1.6,
}
#: Hospitalisation hazard ratios of eFI mild, moderate and severe frailty (Clegg et al. 2016).
FRAILTY_HR: Final = (1.0, 1.93, 3.04, 4.73)
#: QAdmissions (women and men averaged), by ethnic category; mixed groups are our estimate.
ETHNIC_HR: Final = {
    "H": 0.96,
    "J": 1.10,
    "K": 0.95,
    "L": 0.88,
    "M": 1.19,
    "N": 1.09,
    "P": 1.10,
    "R": 0.45,
    "S": 1.0,
}
#: QAdmissions: ex-smoker 1.13; light to moderate current smoker 1.31-1.40.
SMOKING_HR: Final = (1.0, 1.13, 1.35)
#: Per decile step towards the most deprived: 1.06^9 = 1.7 between the extremes, as HES
#: emergency admission rates differ between the most and least deprived tenths (estimate).
DEPRIVATION_HR_PER_DECILE: Final = 1.06
MALE_HR: Final = 1.05  # estimate
#: Per 10 mmol/mol of HbA1c above 53, and for HbA1c under 48 on insulin (estimates).
HBA1C_HR_PER_10: Final = 1.10
LOW_HBA1C_ON_INSULIN_HR: Final = 1.2
INSULIN_HR: Final = 1.3
#: Emergency admissions in the previous 365 days: none, 1, 2, 3 or more. QAdmissions and
#: QMortality both find about 2, 3 and 4.5 times the hazard.
PRIOR_ADMISSION_HR: Final = (1.0, 2.0, 2.9, 4.5)
PRIOR_WINDOW_DAYS: Final = 365.0

#: Share of hypoglycaemia ED attendances that end in admission (the South Central ambulance study
#: took 35% of those attended to hospital; of those who reach ED we admit a quarter; estimate).
HYPO_ADMITTED: Final = 0.25
#: Of emergency admissions: via A&E (21), via the GP (22), other means (28). Estimate.
ADMISSION_ROUTE: Final = ((21, 0.72), (22, 0.22), (28, 0.06))

#: ED attendances without admission per year by age band (London's major A&E departments see about
#: 300 attendances per 1,000 a year, around 30% of them admitted; estimate).
ED_ONLY_RATE: Final = (0.30, 0.18, 0.22, 0.18, 0.16, 0.15, 0.15, 0.17, 0.22, 0.28)
ED_DEPRIVATION_PER_DECILE: Final = 1.07  # the most deprived tenth attends twice as often (HES)

#: Elective admissions per year: a base plus a share per long-term condition (estimate).
ELECTIVE_BASE: Final = (0.01, 0.01, 0.02, 0.025, 0.03, 0.045, 0.06, 0.08, 0.07, 0.04)
ELECTIVE_PER_CONDITION: Final = 0.02

#: Deaths per year: Gompertz in age (about 1.2% a year at 80 for the fit), times frailty and
#: condition hazard ratios (QMortality-like; estimates).
MORTALITY_AT_40: Final = 0.0004
MORTALITY_GOMPERTZ: Final = 0.085
MORTALITY_FRAILTY_HR: Final = (1.0, 1.9, 3.1, 4.5)
MORTALITY_CONDITION_HR: Final = {
    "heart_failure": 1.6,
    "cancer": 1.8,
    "dementia": 1.7,
    "copd": 1.4,
    "ckd": 1.2,
}


def admission_base_rate(cohort: Cohort) -> np.ndarray:
    """Emergency admissions per year with no prior admission and Z = 1, per patient."""
    band = np.minimum(cohort.age // 10, len(targets.AGE_BANDS) - 1)
    log_rate = np.log(np.asarray(BASE_ADMISSION_RATE))[band]
    log_rate += np.where(cohort.female, 0.0, math.log(MALE_HR))
    codes = tuple(targets.ETHNIC_CATEGORY)
    ethnic = np.log([ETHNIC_HR.get(code, 1.0) for code in codes])
    log_rate += ethnic[cohort.ethnicity]
    log_rate += (5.5 - cohort.imd_decile) * math.log(DEPRIVATION_HR_PER_DECILE)
    log_rate += np.log(np.asarray(SMOKING_HR))[np.maximum(cohort.smoking, 0)]
    for name, hr in CONDITION_HR.items():
        log_rate += np.where(cohort.conditions[name], math.log(hr), 0.0)
    log_rate += np.log(np.asarray(FRAILTY_HR))[cohort.frailty]
    hba1c = np.nan_to_num(cohort.hba1c, nan=53.0)
    log_rate += np.maximum(hba1c - 53.0, 0.0) / 10.0 * math.log(HBA1C_HR_PER_10)
    log_rate += np.where(cohort.insulin, math.log(INSULIN_HR), 0.0)
    log_rate += np.where(cohort.insulin & (hba1c < 48), math.log(LOW_HBA1C_ON_INSULIN_HR), 0.0)
    return np.asarray(np.exp(log_rate))


def ed_only_rate(cohort: Cohort) -> np.ndarray:
    band = np.minimum(cohort.age // 10, len(targets.AGE_BANDS) - 1)
    rate = np.asarray(ED_ONLY_RATE)[band] * ED_DEPRIVATION_PER_DECILE ** (5.5 - cohort.imd_decile)
    rate = rate * (1.0 + 0.15 * cohort.condition_count()) * cohort.ed_propensity
    return np.asarray(rate)


def elective_rate(cohort: Cohort) -> np.ndarray:
    band = np.minimum(cohort.age // 10, len(targets.AGE_BANDS) - 1)
    rate = np.asarray(ELECTIVE_BASE)[band] + ELECTIVE_PER_CONDITION * cohort.condition_count()
    return np.asarray(rate)


def mortality_rate(cohort: Cohort) -> np.ndarray:
    rate = MORTALITY_AT_40 * np.exp(MORTALITY_GOMPERTZ * (cohort.age - 40.0))
    rate = np.maximum(rate, 0.0002) * np.asarray(MORTALITY_FRAILTY_HR)[cohort.frailty]
    for name, hr in MORTALITY_CONDITION_HR.items():
        rate = rate * np.where(cohort.conditions[name], hr, 1.0)
    return np.asarray(np.minimum(rate, 0.9))


def prior_hr(count: int) -> float:
    return PRIOR_ADMISSION_HR[min(count, len(PRIOR_ADMISSION_HR) - 1)]


def general_cumulative_hazard(
    base: float, prior_admissions: list[float], start: float, length: float
) -> float:
    """Integral of base x HR(prior admissions) over [start, start + length] days, in years.

    ``prior_admissions`` are admission days before ``start``; each stops counting
    ``PRIOR_WINDOW_DAYS`` after it happened, which is where the hazard steps down.
    """
    end = start + length
    expiries = sorted(
        t + PRIOR_WINDOW_DAYS for t in prior_admissions if t + PRIOR_WINDOW_DAYS > start
    )
    total = 0.0
    t = start
    count = len(expiries)
    for expiry in expiries:
        if expiry >= end:
            break
        total += base * prior_hr(count) * (expiry - t)
        t = expiry
        count -= 1
    total += base * prior_hr(count) * (end - t)
    return total / 365.25


def oracle_risk(cumulative_general: float, z: float, cumulative_hypo: float) -> float:
    """P(first emergency admission within the horizon) knowing everything, Z included."""
    return 1.0 - math.exp(-z * cumulative_general - cumulative_hypo)


def observable_risk(
    cumulative_general: float,
    cumulative_hypo: float,
    admissions_before: int,
    exposure_before: float,
) -> float:
    """The same risk for a model that sees the record but not Z.

    Z's prior is Gamma(k, rate k); after ``admissions_before`` general emergency admissions over
    ``exposure_before`` (the cumulative hazard without Z up to the index date) its posterior is
    Gamma(k + n, rate k + exposure), whose Laplace transform gives the risk in closed form.
    """
    shape = ADMISSION_FRAILTY_SHAPE + admissions_before
    rate = ADMISSION_FRAILTY_SHAPE + exposure_before
    survival_general = (rate / (rate + cumulative_general)) ** shape
    return 1.0 - survival_general * math.exp(-cumulative_hypo)
