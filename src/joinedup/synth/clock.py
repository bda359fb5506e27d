"""Timestamps for the feeds, fast: generation formats millions of them.

Simulation time is days since the start of the feeds (midnight UTC). FHIR and the envelope use
UTC (``2024-04-01T09:15:00Z``); HL7 v2 uses UK local time with its offset
(``20240401101500+0100``), as an English PAS sends it, so that no reader has to guess the zone.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from functools import lru_cache

DAY = 86_400


def last_sunday(year: int, month: int) -> date:
    d = date(year, month + 1, 1) - timedelta(days=1) if month < 12 else date(year, 12, 31)
    return d - timedelta(days=(d.weekday() + 1) % 7)


@lru_cache(maxsize=64)
def _bst(year: int) -> tuple[int, int]:
    """UK summer time of a year as UTC epoch seconds: last Sunday of March 01:00 to last Sunday
    of October 01:00."""
    begin = datetime.combine(last_sunday(year, 3), datetime.min.time(), UTC) + timedelta(hours=1)
    end = datetime.combine(last_sunday(year, 10), datetime.min.time(), UTC) + timedelta(hours=1)
    return int(begin.timestamp()), int(end.timestamp())


@lru_cache(maxsize=8192)
def _day(days_since_epoch: int) -> tuple[str, str, int]:
    """(ISO date, compact date, year) of a UTC day."""
    d = date(1970, 1, 1) + timedelta(days=days_since_epoch)
    return d.isoformat(), d.strftime("%Y%m%d"), d.year


class Clock:
    def __init__(self, start: date) -> None:
        self.start = start
        self.start_epoch = int(datetime.combine(start, datetime.min.time(), UTC).timestamp())

    def epoch(self, days: float) -> int:
        """Seconds since 1970 of a simulation time, to the whole minute (feeds rarely carry
        seconds that mean anything)."""
        return self.start_epoch + int(days * 1440.0) * 60

    def date(self, days: float) -> str:
        return iso_date(self.epoch(days))


def iso(epoch: int) -> str:
    iso_day, _, _ = _day(epoch // DAY)
    s = epoch % DAY
    return f"{iso_day}T{s // 3600:02d}:{s // 60 % 60:02d}:{s % 60:02d}Z"


def iso_date(epoch: int) -> str:
    return _day(epoch // DAY)[0]


def hl7(epoch: int) -> str:
    """HL7 v2 TS in UK local time with its offset, to the second."""
    year = _day(epoch // DAY)[2]
    begin, end = _bst(year)
    offset = 3600 if begin <= epoch < end else 0
    local = epoch + offset
    _, compact, _ = _day(local // DAY)
    s = local % DAY
    zone = "+0100" if offset else "+0000"
    return f"{compact}{s // 3600:02d}{s // 60 % 60:02d}{s % 60:02d}{zone}"


def hl7_date(iso_day: str) -> str:
    return iso_day.replace("-", "")


def local_parts(epoch: int) -> tuple[str, str]:
    """(dd/mm/yyyy, HH:MM) in UK local time, as community systems export them."""
    year = _day(epoch // DAY)[2]
    begin, end = _bst(year)
    local = epoch + (3600 if begin <= epoch < end else 0)
    iso_day, _, _ = _day(local // DAY)
    s = local % DAY
    return f"{iso_day[8:10]}/{iso_day[5:7]}/{iso_day[:4]}", f"{s // 3600:02d}:{s // 60 % 60:02d}"
