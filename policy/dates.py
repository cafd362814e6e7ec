"""Calendar-month arithmetic for warranty periods: same day of month, clamped to the month's last day."""

from __future__ import annotations

import calendar
from datetime import date


def last_day_of_month(year: int, month: int) -> date:
    """Return the last day of the given month (a serial's year and month mean production on that day)."""
    return date(year, month, calendar.monthrange(year, month)[1])


def add_months(d: date, months: int) -> date:
    """Return `d` moved by `months` calendar months, clamping the day to the target month's last day.

    Examples: 2024-02-29 + 1 = 2024-03-29; 2023-12-31 + 26 = 2026-02-28.
    """
    index = d.year * 12 + (d.month - 1) + months
    year, month0 = divmod(index, 12)
    last = last_day_of_month(year, month0 + 1)
    return last if d.day > last.day else date(year, month0 + 1, d.day)
