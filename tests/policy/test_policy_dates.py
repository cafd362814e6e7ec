"""Calendar-month arithmetic: clamping to month ends, leap days, year boundaries."""

from __future__ import annotations

from datetime import date

import pytest

from policy import add_months, last_day_of_month


@pytest.mark.parametrize(
    ("start", "months", "expected"),
    [
        (date(2024, 3, 10), 26, date(2026, 5, 10)),
        (date(2024, 2, 29), 1, date(2024, 3, 29)),
        (date(2023, 12, 31), 26, date(2026, 2, 28)),
        (date(2024, 1, 31), 1, date(2024, 2, 29)),
        (date(2025, 1, 31), 1, date(2025, 2, 28)),
        (date(2024, 2, 29), 12, date(2025, 2, 28)),
        (date(2024, 2, 29), 48, date(2028, 2, 29)),
        (date(2024, 8, 31), 1, date(2024, 9, 30)),
        (date(2024, 11, 15), 2, date(2025, 1, 15)),
        (date(2024, 1, 15), 0, date(2024, 1, 15)),
        (date(2024, 3, 31), -1, date(2024, 2, 29)),
        (date(2024, 1, 31), -2, date(2023, 11, 30)),
    ],
)
def test_add_months(start: date, months: int, expected: date) -> None:
    assert add_months(start, months) == expected


@pytest.mark.parametrize(
    ("year", "month", "expected"),
    [
        (2024, 2, date(2024, 2, 29)),
        (2023, 2, date(2023, 2, 28)),
        (2100, 2, date(2100, 2, 28)),
        (2000, 2, date(2000, 2, 29)),
        (2024, 4, date(2024, 4, 30)),
        (2024, 12, date(2024, 12, 31)),
    ],
)
def test_last_day_of_month(year: int, month: int, expected: date) -> None:
    assert last_day_of_month(year, month) == expected
