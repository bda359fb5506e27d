"""Who the synthetic people are: NHS numbers, hospital numbers and names, all derived from the
patient index so that any patient can be rebuilt on its own, in any process, in any order.

NHS numbers come from the 999 range, which the NHS keeps for test data and never issues to a
person: a generated record can never be mistaken for a real one. The range holds about 909,000
valid numbers (one nine-digit stem in eleven has no check digit), so a population is capped there.
"""

from __future__ import annotations

from functools import lru_cache
from math import gcd

import numpy as np

_TEST_RANGE_STEM = 999_000_000
_WEIGHTS = np.array([10, 9, 8, 7, 6, 5, 4, 3, 2], dtype=np.int64)
# Scrambles patient index -> NHS number so that neighbours in the list are not neighbours in the
# number range (real numbers are not issued by practice). Any multiplier coprime to the count does.
_SCRAMBLE = 7_919


@lru_cache(maxsize=1)
def _valid_test_numbers() -> np.ndarray:
    """Every valid NHS number in the 999 test range, ascending (computed once, in about 0.1 s)."""
    stems = _TEST_RANGE_STEM + np.arange(1_000_000, dtype=np.int64)
    total = np.zeros_like(stems)
    for position, weight in enumerate(_WEIGHTS):
        total += (stems // 10 ** (8 - position)) % 10 * weight
    check = 11 - total % 11
    check[check == 11] = 0
    keep = check != 10
    return np.asarray(stems[keep] * 10 + check[keep], dtype=np.int64)


def max_patients() -> int:
    return int(_valid_test_numbers().size)


def nhs_number(patient_index: int) -> str:
    """The NHS number of patient ``patient_index``: unique, valid, in the 999 test range."""
    numbers = _valid_test_numbers()
    count = numbers.size
    if not 0 <= patient_index < count:
        raise ValueError(f"patient index {patient_index} outside 0..{count - 1}")
    multiplier = _SCRAMBLE if gcd(_SCRAMBLE, count) == 1 else 1
    return str(int(numbers[(patient_index * multiplier + 12_345) % count]))


def hospital_number(trust_index: int, patient_index: int) -> str:
    """A trust's own patient number (MRN): 7 digits, different at each trust for one person."""
    return f"{(patient_index * 7_919 + trust_index * 1_000_003 + 104_729) % 9_000_000 + 1_000_000}"


def temporary_hospital_number(trust_index: int, visit_serial: int) -> str:
    """The number an emergency department gives a patient it cannot yet identify ("T" + 7)."""
    return f"T{(visit_serial * 31 + trust_index) % 10_000_000:07d}"


def corrupt_check_digit(number: str) -> str:
    """The same number with a wrong last digit: what a keying slip looks like."""
    last = int(number[-1])
    return number[:-1] + str((last + 3) % 10)


def with_spaces(number: str) -> str:
    """``9991234567`` as people write it: ``999 123 4567``."""
    return f"{number[:3]} {number[3:6]} {number[6:]}"


FEMALE_GIVEN = (
    "Amira",
    "Chloe",
    "Ellen",
    "Grace",
    "Isla",
    "Fatima",
    "Aisha",
    "Olivia",
    "Sofia",
    "Maria",
    "Priya",
    "Zainab",
    "Hannah",
    "Ruth",
    "Joan",
    "Margaret",
    "Patricia",
    "Blessing",
    "Mei",
    "Nadia",
    "Leila",
    "Sarah",
    "Emily",
    "Yasmin",
    "Chidinma",
    "Agnieszka",
    "Lucia",
    "Irene",
    "Dorothy",
    "Sunita",
)
MALE_GIVEN = (
    "Ben",
    "Dev",
    "Farid",
    "Hugo",
    "Jamal",
    "Omar",
    "Samuel",
    "Tomasz",
    "James",
    "David",
    "Mohammed",
    "Ahmed",
    "Rajesh",
    "Kwame",
    "Daniel",
    "Luca",
    "George",
    "Arthur",
    "Wei",
    "Yusuf",
    "Peter",
    "Michael",
    "Ibrahim",
    "Kofi",
    "Ravi",
    "John",
    "Patrick",
    "Hassan",
    "Ali",
    "Stanley",
)
FAMILY = (
    "Ahmed",
    "Brown",
    "Clarke",
    "Das",
    "Evans",
    "Fofana",
    "Green",
    "Hussain",
    "Khan",
    "Smith",
    "Jones",
    "Williams",
    "Taylor",
    "Patel",
    "Begum",
    "Ali",
    "Nowak",
    "Rossi",
    "Okafor",
    "Mensah",
    "Chen",
    "Wong",
    "Murphy",
    "O'Brien",
    "Silva",
    "Santos",
    "Haddad",
    "Mahmoud",
    "Campbell",
    "Walker",
    "Hughes",
    "Shah",
    "Mistry",
    "Kowalski",
    "Adeyemi",
    "Osei",
    "Hall",
    "Wright",
    "King",
    "Ibrahim",
)
STREETS = (
    "Harrow Road",
    "Westbourne Grove",
    "Fulham Palace Road",
    "Edgware Road",
    "Ladbroke Grove",
    "Shepherds Bush Road",
    "Kilburn Lane",
    "Warwick Avenue",
    "Golborne Road",
    "Bayswater Road",
    "Uxbridge Road",
    "North End Road",
    "Elgin Avenue",
    "Marylebone Lane",
    "Goldhawk Road",
)
POSTCODE_DISTRICTS = ("W2", "W9", "W10", "W11", "W12", "W6", "W14", "NW8", "NW6", "SW6", "W1")


def person_name(patient_index: int, female: bool) -> tuple[str, str]:
    """(given, family) for a patient: fixed by the index, varied enough to read as a list."""
    given = FEMALE_GIVEN if female else MALE_GIVEN
    return (
        given[(patient_index * 13 + 7) % len(given)],
        FAMILY[(patient_index * 17 + patient_index // 40) % len(FAMILY)],
    )


def address(patient_index: int) -> tuple[str, str]:
    """(first line, postcode) in the fictional streets of the population's boroughs."""
    street = STREETS[(patient_index * 7) % len(STREETS)]
    district = POSTCODE_DISTRICTS[(patient_index * 11) % len(POSTCODE_DISTRICTS)]
    letters = "ABDEFGHJLNPQRSTUWXYZ"
    unit = (
        f"{patient_index % 9 + 1}{letters[patient_index % 20]}{letters[(patient_index // 20) % 20]}"
    )
    return f"{patient_index % 180 + 1} {street}", f"{district} {unit}"
