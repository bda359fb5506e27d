"""Who is registered with a practice: age, sex, ethnicity, deprivation, long-term conditions,
diabetes and its treatment, frailty, smoking, and the hidden propensities of the hazard model.

Sampling is vectorised over a whole practice with numpy (a practice is the unit of work and has its
own random stream, see ``rng.py``). Conditions cluster through a Gaussian copula: each person has a
multimorbidity liability shared by all conditions, and a condition is present when the person's
liability for it passes the threshold that gives exactly the age band's prevalence. So
prevalences are on target while the same people tend to have several conditions, as in life.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from statistics import NormalDist

import numpy as np

from joinedup.synth import targets
from joinedup.synth.rng import stream
from joinedup.synth.world import Practice

_ETHNIC_CODES = tuple(targets.ETHNIC_CATEGORY)
_ETHNIC_P = np.array([targets.ETHNIC_CATEGORY[c] for c in _ETHNIC_CODES])
_ETHNIC_P = _ETHNIC_P / _ETHNIC_P.sum()
_IMD_P = np.array(targets.IMD_DECILE_SHARE) / sum(targets.IMD_DECILE_SHARE)
_BAND_P = np.array(targets.AGE_BAND_SHARE)
_NORMAL = NormalDist()

#: Share of conditions already coded when the feed starts; the rest reach the problem list later
#: (a data-quality fact of GP records). The truth knows them from the start.
CODED_AT_START = 0.92
#: Hypoglycaemia needing emergency care per person-year on insulin: 0.082 (type 1) and 0.037
#: (insulin-treated type 2) in Tayside 2011-12 (Wang et al. 2017).
HYPO_RATE = {"diabetes_t1": 0.082, "diabetes_t2": 0.037}
#: Shape of the gamma spread of hypoglycaemia propensity: small, so a few people carry most
#: events, as in every study of severe hypoglycaemia.
HYPO_SHAPE = 0.6
#: Share of insulin users who are frequent attenders for a spell of months (the pilot's man came
#: 19 times in six months), at least one in every practice that has insulin users.
FREQUENT_ATTENDER_SHARE = 0.015
#: Shape of the gamma frailty of emergency admissions (unobserved heterogeneity, mean 1).
ADMISSION_FRAILTY_SHAPE = 2.0
#: Shape of the gamma propensity to attend the emergency department without admission.
ED_SHAPE = 1.5


@dataclass
class Cohort:
    """One practice's patients, as columns (index i of every array is one person)."""

    index: np.ndarray  # global patient index
    age: np.ndarray  # whole years at the start of the feeds
    birth_offset_days: np.ndarray  # days between the birthday and the start (0-364)
    female: np.ndarray
    ethnicity: np.ndarray  # index into ETHNIC_CODES
    imd_decile: np.ndarray  # 1 = most deprived
    conditions: dict[str, np.ndarray]  # name -> bool (truth, at the start)
    coded_at_start: dict[str, np.ndarray]  # name -> bool (on the problem list at the start)
    insulin: np.ndarray
    hba1c: np.ndarray  # mmol/mol; nan without diabetes
    frailty: np.ndarray  # 0 fit, 1 mild, 2 moderate, 3 severe
    smoking: np.ndarray  # 0 never, 1 ex, 2 current (adults); -1 children
    admission_frailty: np.ndarray  # hidden gamma multiplier of emergency admissions
    ed_propensity: np.ndarray  # hidden gamma multiplier of ED attendances without admission
    hypo_rate: np.ndarray  # hypoglycaemia ED attendances per year (0 without insulin)
    frequent_attender: np.ndarray  # bool: has a spell of very frequent hypo attendances
    main_trust: np.ndarray  # index of the hospital the patient mostly uses

    def __len__(self) -> int:
        return int(self.index.size)

    @property
    def diabetes(self) -> np.ndarray:
        return np.asarray(self.conditions["diabetes_t1"] | self.conditions["diabetes_t2"])

    def condition_count(self) -> np.ndarray:
        return np.asarray(sum(c.astype(np.int64) for c in self.conditions.values()))


def ethnic_code(index: int) -> str:
    return _ETHNIC_CODES[index]


@lru_cache(maxsize=1)
def _diabetes_thresholds() -> np.ndarray:
    """Copula thresholds for type 2 diabetes by [age band, ethnic group, IMD decile - 1].

    The age-band prevalence is scaled by ethnic and deprivation relative risks, divided by their
    population means so that the crude prevalence is unchanged.
    """
    eth_rr = np.array([targets.DIABETES_ETHNIC_RR.get(c, 1.0) for c in _ETHNIC_CODES])
    dep_rr = targets.DIABETES_DEPRIVATION_RR_PER_DECILE ** (10 - np.arange(1, 11))
    norm = float(eth_rr @ _ETHNIC_P) * float(dep_rr @ _IMD_P)
    base = np.array(targets.CONDITION_PREVALENCE["diabetes_t2"])
    p = base[:, None, None] * eth_rr[None, :, None] * dep_rr[None, None, :] / norm
    return _upper_thresholds(np.clip(p, 0.0, 0.95))


def _upper_thresholds(p: np.ndarray) -> np.ndarray:
    """z such that P(N(0,1) > z) = p (inf where p is 0)."""
    flat = [_NORMAL.inv_cdf(1 - v) if v > 0 else np.inf for v in np.ravel(p)]
    return np.array(flat).reshape(np.shape(p))


@lru_cache(maxsize=1)
def _condition_thresholds() -> dict[str, np.ndarray]:
    return {
        name: _upper_thresholds(np.array(prevalence))
        for name, prevalence in targets.CONDITION_PREVALENCE.items()
    }


@lru_cache(maxsize=1)
def _frailty_thresholds() -> np.ndarray:
    """Cut points [band, 3] of the frailty liability between fit/mild/moderate/severe."""
    cuts = np.full((len(targets.AGE_BANDS), 3), np.inf)
    for band, shares in targets.FRAILTY_BY_BAND.items():
        cumulative = np.cumsum(shares)[:3]
        cuts[targets.band_index(band)] = [_NORMAL.inv_cdf(float(c)) for c in cumulative]
    return cuts


def sample_practice(seed: int, practice: Practice, hospitals: int) -> Cohort:
    """Everyone registered with ``practice``, drawn from the practice's own random stream."""
    rng = stream(seed, "practice", practice.index)
    n = practice.list_size
    band = rng.choice(len(_BAND_P), size=n, p=_BAND_P)
    age = np.minimum(
        np.asarray(targets.AGE_BANDS)[band] + rng.integers(0, 10, size=n), targets.MAX_AGE - 1
    )
    band = np.minimum(age // 10, len(targets.AGE_BANDS) - 1)
    female = rng.random(n) < np.asarray(targets.FEMALE_SHARE)[band]
    ethnicity = rng.choice(len(_ETHNIC_P), size=n, p=_ETHNIC_P)
    imd = rng.choice(10, size=n, p=_IMD_P) + 1
    imd = np.clip(np.rint(imd + practice.deprivation_shift), 1, 10).astype(np.int64)

    rho = targets.MULTIMORBIDITY_CORRELATION
    shared = rng.standard_normal(n)
    thresholds = _condition_thresholds()
    conditions: dict[str, np.ndarray] = {}
    for name in targets.CONDITIONS:
        liability = np.sqrt(rho) * shared + np.sqrt(1 - rho) * rng.standard_normal(n)
        if name == "diabetes_t2":
            threshold = _diabetes_thresholds()[band, ethnicity, imd - 1]
        else:
            threshold = thresholds[name][band]
        conditions[name] = liability > threshold
    conditions["diabetes_t2"] &= ~conditions["diabetes_t1"]

    t1, t2 = conditions["diabetes_t1"], conditions["diabetes_t2"]
    insulin = t1 | (t2 & (rng.random(n) < targets.T2_INSULIN_SHARE))
    hba1c = np.full(n, np.nan)
    for name, mask in (("diabetes_t1", t1), ("diabetes_t2", t2)):
        values = rng.normal(targets.HBA1C_MEAN[name], targets.HBA1C_SD[name], n)
        hba1c[mask] = values[mask]
    hba1c[t2 & insulin] += 5.0  # insulin is started when tablets fail
    hba1c = np.where(np.isnan(hba1c), hba1c, np.clip(np.rint(hba1c), 36, 140))

    frailty_liability = np.sqrt(0.5) * shared + np.sqrt(0.5) * rng.standard_normal(n)
    cuts = _frailty_thresholds()[band]
    frailty = (frailty_liability[:, None] > cuts).sum(axis=1)

    smoking_draw = rng.random(n)
    smoking = np.where(smoking_draw < targets.SMOKING_CURRENT, 2, 0)
    smoking = np.where(
        (smoking_draw >= targets.SMOKING_CURRENT)
        & (smoking_draw < targets.SMOKING_CURRENT + targets.SMOKING_EX),
        1,
        smoking,
    )
    smoking = np.where(age >= 18, smoking, -1)

    coded = {name: rng.random(n) < CODED_AT_START for name in targets.CONDITIONS}

    hypo_rate = np.zeros(n)
    for name, mask in (("diabetes_t1", t1), ("diabetes_t2", t2 & insulin)):
        hypo_rate[mask] = HYPO_RATE[name]
    hypo_rate *= np.where(hba1c < 48, 2.0, 1.0) * np.where(age >= 75, 1.5, 1.0)
    hypo_rate *= rng.gamma(HYPO_SHAPE, 1 / HYPO_SHAPE, n)
    frequent = np.zeros(n, dtype=bool)
    users = np.flatnonzero(insulin)
    if users.size:
        chosen = max(1, round(FREQUENT_ATTENDER_SHARE * users.size))
        frequent[rng.choice(users, size=chosen, replace=False)] = True

    main_trust = np.where(
        rng.random(n) < 0.85, practice.home_trust, rng.integers(0, hospitals, size=n)
    )
    return Cohort(
        index=practice.first_patient + np.arange(n),
        age=age,
        birth_offset_days=rng.integers(0, 365, size=n),
        female=female,
        ethnicity=ethnicity,
        imd_decile=imd,
        conditions=conditions,
        coded_at_start=coded,
        insulin=insulin,
        hba1c=hba1c,
        frailty=frailty,
        smoking=smoking,
        admission_frailty=rng.gamma(ADMISSION_FRAILTY_SHAPE, 1 / ADMISSION_FRAILTY_SHAPE, n),
        ed_propensity=rng.gamma(ED_SHAPE, 1 / ED_SHAPE, n),
        hypo_rate=hypo_rate,
        frequent_attender=frequent,
        main_trust=main_trust,
    )
