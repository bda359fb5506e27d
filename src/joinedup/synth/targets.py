"""What the synthetic population should look like, with where each number comes from.

Every figure here is a target that ``population.py`` samples from and ``tests/test_synth_*``
checks within the tolerance written next to it. ``docs/synthetic-population.md`` lists the public
source of each one and says which are our own estimates. Keys in ``SOURCE`` name those sources.

Ages are banded by decade because the source (Census 2021 for Westminster, an inner North West
London borough) is published that way; within a band ages are drawn uniformly.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

#: Lower bounds of the age bands; the last band is 90-99.
AGE_BANDS: Final = (0, 10, 20, 30, 40, 50, 60, 70, 80, 90)
MAX_AGE: Final = 100

# Census 2021, Westminster (ONS, via citypopulation.de): 0-9 15,004; 10-19 17,792; 20-29 40,379;
# 30-39 34,861; 40-49 26,065; 50-59 25,090; 60-69 15,722; 70-79 10,485; 80+ 6,077 of 191,475.
# The 80+ count is split 85:15 between 80-89 and 90+ (our estimate).
_CENSUS_COUNTS: Final = (15004, 17792, 40379, 34861, 26065, 25090, 15722, 10485, 5165, 912)
AGE_BAND_SHARE: Final = tuple(c / sum(_CENSUS_COUNTS) for c in _CENSUS_COUNTS)

#: Share of women in each age band: 51.5% overall in Westminster (Census 2021); the rise with age
#: is our estimate from England's life tables.
FEMALE_SHARE: Final = (0.49, 0.49, 0.52, 0.51, 0.50, 0.50, 0.51, 0.54, 0.58, 0.66)

#: NHS Data Dictionary ETHNIC CATEGORY codes and their shares. Census 2021 Westminster: White
#: 56.2%, Asian 16.8%, Black 7.4%, Mixed 6.4%, Arab 7.4% and other 5.8% (both coded S); the split
#: within each high-level group is our estimate.
ETHNIC_CATEGORY: Final = {
    "A": 0.300,  # White British
    "B": 0.020,  # White Irish
    "C": 0.242,  # Any other White background
    "D": 0.015,  # White and Black Caribbean
    "E": 0.013,  # White and Black African
    "F": 0.018,  # White and Asian
    "G": 0.018,  # Any other mixed background
    "H": 0.045,  # Indian
    "J": 0.015,  # Pakistani
    "K": 0.035,  # Bangladeshi
    "L": 0.053,  # Any other Asian background
    "M": 0.022,  # Caribbean
    "N": 0.046,  # African
    "P": 0.006,  # Any other Black background
    "R": 0.020,  # Chinese
    "S": 0.132,  # Any other ethnic group (Arab included)
}
ETHNIC_DISPLAY: Final = {
    "A": "British",
    "B": "Irish",
    "C": "Any other White background",
    "D": "White and Black Caribbean",
    "E": "White and Black African",
    "F": "White and Asian",
    "G": "Any other mixed background",
    "H": "Indian",
    "J": "Pakistani",
    "K": "Bangladeshi",
    "L": "Any other Asian background",
    "M": "Caribbean",
    "N": "African",
    "P": "Any other Black background",
    "R": "Chinese",
    "S": "Any other ethnic group",
}

#: Index of Multiple Deprivation decile (1 = most deprived) of where people live. Inner North West
#: London mixes some of England's most and least deprived areas; this shape is our estimate.
IMD_DECILE_SHARE: Final = (0.08, 0.14, 0.14, 0.12, 0.10, 0.10, 0.09, 0.08, 0.08, 0.07)

#: Long-term conditions: the share of people in each age band (``AGE_BANDS``) who have the
#: condition recorded. Shapes follow QOF registers (NHS England, 2022-23) with age gradients we
#: estimated; the crude prevalences they give for this age structure are in ``CRUDE_TARGETS``.
CONDITION_PREVALENCE: Final = {
    "diabetes_t2": (0.0, 0.001, 0.004, 0.015, 0.042, 0.088, 0.145, 0.195, 0.185, 0.15),
    "diabetes_t1": (0.001, 0.003, 0.004, 0.004, 0.004, 0.004, 0.004, 0.003, 0.002, 0.001),
    "copd": (0.0, 0.0, 0.0, 0.001, 0.005, 0.015, 0.035, 0.06, 0.07, 0.06),
    "heart_failure": (0.0, 0.0, 0.0, 0.001, 0.002, 0.006, 0.015, 0.04, 0.08, 0.12),
    "ckd": (0.0, 0.0, 0.0, 0.002, 0.006, 0.02, 0.05, 0.12, 0.25, 0.35),
    "dementia": (0.0, 0.0, 0.0, 0.0, 0.001, 0.002, 0.008, 0.04, 0.13, 0.28),
    "smi": (0.0, 0.002, 0.008, 0.012, 0.014, 0.014, 0.012, 0.01, 0.008, 0.006),
    "atrial_fibrillation": (0.0, 0.0, 0.0, 0.001, 0.004, 0.01, 0.03, 0.08, 0.15, 0.18),
    "hypertension": (0.0, 0.001, 0.01, 0.03, 0.08, 0.18, 0.32, 0.48, 0.58, 0.6),
    "asthma": (0.04, 0.08, 0.07, 0.06, 0.06, 0.06, 0.06, 0.06, 0.05, 0.04),
    "cancer": (0.001, 0.002, 0.004, 0.008, 0.015, 0.03, 0.06, 0.1, 0.13, 0.13),
}
CONDITIONS: Final = tuple(CONDITION_PREVALENCE)

#: Relative risk of type 2 diabetes by ethnic category (South Asian and Black groups have about
#: two and 1.6 times the prevalence of White groups; Diabetes UK). The sampler divides the
#: age-specific prevalence by the population mean of these, so crude prevalence stays on target.
DIABETES_ETHNIC_RR: Final = {
    "H": 2.0,
    "J": 2.2,
    "K": 2.2,
    "L": 1.6,
    "M": 1.6,
    "N": 1.6,
    "P": 1.5,
    "D": 1.2,
    "E": 1.2,
    "F": 1.2,
    "G": 1.1,
    "S": 1.3,
}
#: Relative risk of type 2 diabetes per decile step towards the most deprived (estimate).
DIABETES_DEPRIVATION_RR_PER_DECILE: Final = 1.04

#: How strongly conditions cluster: the correlation of the latent liabilities (a Gaussian copula
#: keeps each condition's prevalence exact while multimorbidity clusters). Estimate.
MULTIMORBIDITY_CORRELATION: Final = 0.3

#: Share of people with type 2 diabetes treated with insulin: 18.7% in Tayside 2011-12 (Wang et
#: al. 2017). Everyone with type 1 diabetes is.
T2_INSULIN_SHARE: Final = 0.18
#: HbA1c in mmol/mol: mean and standard deviation (NDA shows type 1 runs higher); estimates.
HBA1C_MEAN: Final = {"diabetes_t1": 67.0, "diabetes_t2": 57.0}
HBA1C_SD: Final = {"diabetes_t1": 14.0, "diabetes_t2": 13.0}

#: Electronic frailty index categories (fit, mild, moderate, severe) by age band. Clegg et al.
#: 2016 found 50/35/12/3% among 65-95 year olds; Walsh et al. 2023 found 10% of 50-64 and 43.7%
#: of over-65s frail. The split by decade is our estimate.
FRAILTY_BY_BAND: Final = {
    50: (0.90, 0.08, 0.017, 0.003),
    60: (0.78, 0.17, 0.04, 0.01),
    70: (0.55, 0.32, 0.10, 0.03),
    80: (0.35, 0.40, 0.19, 0.06),
    90: (0.20, 0.40, 0.28, 0.12),
}
FRAILTY_LEVELS: Final = ("fit", "mild", "moderate", "severe")

#: Smoking status of adults: current and ex-smokers (ONS Annual Population Survey puts London's
#: current smokers near 12%; the ex-smoker share is our estimate).
SMOKING_CURRENT: Final = 0.12
SMOKING_EX: Final = 0.24

#: Practices, their groups and the average list size (the pilot: practices of about 5,400
#: patients in multidisciplinary groups of 5-17 practices).
PRACTICE_LIST_SIZE: Final = 5400
PRACTICE_LIST_SD: Final = 1500
MDG_MIN_PRACTICES: Final = 5
MDG_MAX_PRACTICES: Final = 17


@dataclass(frozen=True)
class Target:
    """A figure the generated population must meet: ``value`` within ``tolerance`` (absolute)."""

    name: str
    value: float
    tolerance: float
    source: str

    def met_by(self, observed: float) -> bool:
        return abs(observed - self.value) <= self.tolerance


#: Crude figures over the whole population, checked by the tests. Tolerances are wide enough for
#: a few thousand patients (about three binomial standard errors at 3,000) yet fail a real drift.
CRUDE_TARGETS: Final = (
    Target("share aged 75 and over", 0.059, 0.012, "census-2021-westminster"),
    Target("share aged 65 and over", 0.126, 0.018, "census-2021-westminster"),
    Target("share female", 0.515, 0.03, "census-2021-westminster"),
    Target("diabetes prevalence (all ages)", 0.052, 0.012, "qof-2022-23"),
    Target("type 1 share of diabetes", 0.075, 0.04, "nda-type-1"),
    Target("insulin-treated share of diabetes", 0.24, 0.06, "tayside-hypo-2017"),
    Target("share of over-65s frail (eFI mild or worse)", 0.437, 0.07, "efi-walsh-2023"),
    Target("COPD prevalence", 0.0112, 0.006, "qof-2022-23"),
    Target("heart failure prevalence", 0.0074, 0.005, "qof-2022-23"),
    Target("dementia prevalence", 0.0081, 0.005, "qof-2022-23"),
    Target("serious mental illness prevalence", 0.0096, 0.005, "qof-2022-23"),
    Target("share White (A-C)", 0.562, 0.035, "census-2021-westminster"),
)

#: Outcomes of the hazard model, checked on a generated population (``tests/test_synth_hazard``).
OUTCOME_TARGETS: Final = (
    # HES: about 6 million emergency admissions a year for 56 million people in England; inner
    # London's younger population admits less. Estimate for this population: 75 per 1,000.
    Target("emergency admissions per person-year", 0.075, 0.03, "hes-emergency-admissions"),
    # QAdmissions derivation cohort: 265,573 of 2,849,381 adults (9.3%) had an emergency admission
    # within two years; London's hazard ratio was 0.91-0.97. Our one-year analogue for adults.
    Target("adults with an emergency admission within a year", 0.05, 0.025, "qadmissions-2013"),
)

SOURCE: Final = {
    "census-2021-westminster": "ONS Census 2021, Westminster, via citypopulation.de",
    "qof-2022-23": "NHS England, Quality and Outcomes Framework 2022-23, prevalence",
    "nda-type-1": "NHS England, National Diabetes Audit 2021-22, type 1 diabetes",
    "tayside-hypo-2017": "Wang et al. 2017, Clin Diabetes Endocrinol 3:7",
    "efi-clegg-2016": "Clegg et al. 2016, Age and Ageing 45:353",
    "efi-walsh-2023": "Walsh et al. 2023, Age and Ageing (eFI prevalence 2006-2017)",
    "hes-emergency-admissions": "NHS Digital HES; Health Foundation 2018; NAO 2018",
    "qadmissions-2013": "Hippisley-Cox & Coupland 2013, BMJ Open 3:e003482",
}


def band_index(age: int) -> int:
    """The index in ``AGE_BANDS`` of an age in years."""
    return min(age // 10, len(AGE_BANDS) - 1)
