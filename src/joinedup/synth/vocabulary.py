"""The codes the synthetic feeds write: SNOMED CT for GP records and some trusts, ICD-10 (UK 5th
edition) for the others, LOINC for results. Codes in DESIGN.md "Codes" come from
``fhir_common.codes``; the rest are common, well-known concepts.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from fhir_common import codes


@dataclass(frozen=True)
class Concept:
    snomed: str
    icd10: str
    display: str
    icd10_display: str = ""

    def icd10_text(self) -> str:
        return self.icd10_display or self.display


#: Long-term conditions as they appear on a GP problem list (SNOMED CT) and in a hospital's
#: secondary diagnoses (ICD-10).
CONDITIONS: Final = {
    "diabetes_t1": Concept(codes.DIABETES_TYPE_1_SCTID, "E10.9", "Type 1 diabetes mellitus"),
    "diabetes_t2": Concept(codes.DIABETES_TYPE_2_SCTID, "E11.9", "Type 2 diabetes mellitus"),
    "copd": Concept("13645005", "J44.9", "Chronic obstructive lung disease"),
    "heart_failure": Concept("84114007", "I50.9", "Heart failure"),
    "ckd": Concept("709044004", "N18.9", "Chronic kidney disease"),
    "dementia": Concept("52448006", "F03", "Dementia"),
    "smi": Concept("58214004", "F20.9", "Schizophrenia"),
    "atrial_fibrillation": Concept("49436004", "I48.9", "Atrial fibrillation"),
    "hypertension": Concept("38341003", "I10", "Hypertensive disorder"),
    "asthma": Concept("195967001", "J45.9", "Asthma"),
    "cancer": Concept("363346000", "C80.9", "Malignant neoplastic disease"),
}

FRAILTY: Final = (
    None,
    Concept(codes.FRAILTY_MILD, "R54", "Mild frailty", "Senility"),
    Concept(codes.FRAILTY_MODERATE, "R54", "Moderate frailty", "Senility"),
    Concept(codes.FRAILTY_SEVERE, "R54", "Severe frailty", "Senility"),
)

#: Primary diagnoses of emergency admissions and ED attendances.
DIAGNOSES: Final = {
    "hypoglycaemia": Concept(
        codes.HYPOGLYCAEMIA_DUE_TO_DIABETES_SCTID,
        "E16.0",
        "Hypoglycaemia due to diabetes mellitus",
        "Drug-induced hypoglycaemia without coma",
    ),
    "copd-exacerbation": Concept(
        "195951007", "J44.1", "Acute exacerbation of chronic obstructive airways disease"
    ),
    "heart-failure": Concept("84114007", "I50.9", "Heart failure"),
    "pneumonia": Concept("233604007", "J18.9", "Pneumonia"),
    "urinary-tract-infection": Concept("68566005", "N39.0", "Urinary tract infectious disease"),
    "hip-fracture": Concept("5913000", "S72.0", "Fracture of neck of femur"),
    "chest-pain": Concept("29857009", "R07.4", "Chest pain"),
    "diabetic-ketoacidosis": Concept("420422005", "E10.1", "Ketoacidosis due to diabetes mellitus"),
    "atrial-fibrillation": Concept("49436004", "I48.9", "Atrial fibrillation"),
    "delirium": Concept("2776000", "F05.9", "Delirium"),
    "cellulitis": Concept("128045006", "L03.9", "Cellulitis"),
    "acute-kidney-injury": Concept("14669001", "N17.9", "Acute renal failure syndrome"),
    "abdominal-pain": Concept("21522001", "R10.4", "Abdominal pain"),
    "headache": Concept("25064002", "R51", "Headache"),
    "ankle-sprain": Concept("44465007", "S93.4", "Sprain of ankle"),
}

#: Which diagnoses an admission of someone with a condition tends to carry (weights).
DIAGNOSIS_BY_CONDITION: Final = {
    "copd": ("copd-exacerbation", 3.0),
    "heart_failure": ("heart-failure", 3.0),
    "atrial_fibrillation": ("atrial-fibrillation", 1.0),
    "dementia": ("delirium", 1.5),
    "ckd": ("acute-kidney-injury", 1.0),
    "diabetes_t1": ("diabetic-ketoacidosis", 1.0),
}
GENERAL_DIAGNOSES: Final = (
    ("pneumonia", 2.0),
    ("urinary-tract-infection", 1.5),
    ("chest-pain", 2.0),
    ("cellulitis", 1.0),
)
ELDERLY_DIAGNOSES: Final = (("hip-fracture", 1.0),)
#: Why people attend the emergency department and go home again.
ED_ONLY_DIAGNOSES: Final = (
    ("ankle-sprain", 3.0),
    ("abdominal-pain", 2.0),
    ("chest-pain", 2.0),
    ("headache", 1.0),
    ("cellulitis", 1.0),
    ("urinary-tract-infection", 1.0),
)

#: Observations: LOINC code, display, UCUM unit.
OBSERVATIONS: Final = {
    "hba1c": (
        codes.HBA1C_IFCC_LOINC,
        "Hemoglobin A1c/Hemoglobin.total in Blood by IFCC",
        "mmol/mol",
    ),
    "systolic-bp": ("8480-6", "Systolic blood pressure", "mm[Hg]"),
    "diastolic-bp": ("8462-4", "Diastolic blood pressure", "mm[Hg]"),
    "body-weight": ("29463-7", "Body weight", "kg"),
}

#: Smoking status findings (SNOMED CT).
SMOKING: Final = (
    ("266919005", "Never smoked tobacco"),
    ("8517006", "Ex-smoker"),
    ("77176002", "Smoker"),
)
SMOKING_STATUS_LOINC: Final = "72166-2"

#: Long-term medicines by condition: SNOMED CT substance, display.
MEDICINES: Final = {
    "insulin": ("67866001", "Insulin"),
    "metformin": ("372567009", "Metformin"),
    "salbutamol": ("372897005", "Salbutamol"),
    "furosemide": ("387475002", "Furosemide"),
    "amlodipine": ("386864001", "Amlodipine"),
}

#: Hospital services (NHS Data Dictionary treatment function codes) used in PV1-10.
TREATMENT_FUNCTION: Final = {
    "emergency": ("180", "Emergency Medicine"),
    "general-medicine": ("300", "General Internal Medicine"),
    "diabetic-medicine": ("307", "Diabetes"),
    "geriatric-medicine": ("430", "Geriatric Medicine"),
    "cardiology": ("320", "Cardiology"),
    "trauma": ("110", "Trauma and Orthopaedics"),
    "general-surgery": ("100", "General Surgery"),
}
