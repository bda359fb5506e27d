"""One patient as plain Python values, for the per-patient event loop (numpy scalars are slow to
touch one at a time; converting a practice's columns with ``tolist`` once is not)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from joinedup.synth import hazard, targets
from joinedup.synth.population import Cohort, ethnic_code


@dataclass(slots=True)
class Person:
    index: int
    age: int
    birth_offset_days: int
    female: bool
    ethnicity: str
    imd_decile: int
    conditions: frozenset[str]
    uncoded: frozenset[str]  # true conditions not yet on the GP problem list at the start
    insulin: bool
    hba1c: float | None
    frailty: int
    smoking: int
    admission_frailty: float  # Z
    hypo_rate: float
    frequent_attender: bool
    main_trust: int
    admission_rate: float  # base x covariates, per year, without Z and prior admissions
    ed_rate: float
    elective_rate: float
    mortality_rate: float
    birth_date: str = ""  # ISO date, set once the feeds' start date is known

    @property
    def diabetes_type(self) -> int:
        if "diabetes_t1" in self.conditions:
            return 1
        return 2 if "diabetes_t2" in self.conditions else 0

    @property
    def care_coordinated(self) -> bool:
        """In the MDG's case management: frail older people and those with heart or lung failure
        (the pilot's people over 75 and with diabetes, at high risk)."""
        if self.frailty == 3 or (self.age >= 75 and self.frailty >= 2):
            return True
        organ_failure = bool(self.conditions & {"heart_failure", "copd"})
        return self.age >= 65 and organ_failure and self.frailty >= 1


def people(cohort: Cohort) -> Iterator[Person]:
    base = hazard.admission_base_rate(cohort).tolist()
    ed = hazard.ed_only_rate(cohort).tolist()
    elective = hazard.elective_rate(cohort).tolist()
    mortality = hazard.mortality_rate(cohort).tolist()
    present = {name: cohort.conditions[name].tolist() for name in targets.CONDITIONS}
    coded = {name: cohort.coded_at_start[name].tolist() for name in targets.CONDITIONS}
    columns = (
        cohort.index.tolist(),
        cohort.age.tolist(),
        cohort.birth_offset_days.tolist(),
        cohort.female.tolist(),
        cohort.ethnicity.tolist(),
        cohort.imd_decile.tolist(),
        cohort.insulin.tolist(),
        cohort.hba1c.tolist(),
        cohort.frailty.tolist(),
        cohort.smoking.tolist(),
        cohort.admission_frailty.tolist(),
        cohort.hypo_rate.tolist(),
        cohort.frequent_attender.tolist(),
        cohort.main_trust.tolist(),
    )
    for i, row in enumerate(zip(*columns, strict=True)):
        (
            index,
            age,
            birth,
            female,
            eth,
            imd,
            insulin,
            hba1c,
            frailty,
            smoking,
            z,
            hypo,
            freq,
            trust,
        ) = row
        conditions = frozenset(name for name in targets.CONDITIONS if present[name][i])
        yield Person(
            index=index,
            age=age,
            birth_offset_days=birth,
            female=female,
            ethnicity=ethnic_code(eth),
            imd_decile=imd,
            conditions=conditions,
            uncoded=frozenset(name for name in conditions if not coded[name][i]),
            insulin=insulin,
            hba1c=None if hba1c != hba1c else hba1c,  # nan
            frailty=frailty,
            smoking=smoking,
            admission_frailty=z,
            hypo_rate=hypo,
            frequent_attender=freq,
            main_trust=trust,
            admission_rate=base[i],
            ed_rate=ed[i],
            elective_rate=elective[i],
            mortality_rate=mortality[i],
        )
