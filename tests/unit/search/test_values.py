from datetime import date
from decimal import Decimal

import pytest

from search_dsl.values import parse_date, parse_decimal, parse_int, parse_timespan

TODAY = date(2024, 6, 12)  # a Wednesday


@pytest.mark.parametrize("text, expected", [
    ("1/15/24", date(2024, 1, 15)), ("01/15/2024", date(2024, 1, 15)), ("1/15/99", date(1999, 1, 15)),
    ("Jan 15, 2024", date(2024, 1, 15)), ("January 15, 2024", date(2024, 1, 15)),
    ("Monday, January 15, 2024", date(2024, 1, 15)), ("Jan 15, 2024 10:00:00 AM", date(2024, 1, 15)),
    ("15/01/2024", date(2025, 3, 1)),  # lenient: month 15
    ("2024-01-15", None), ("yesterday", None), ("Foo 1, 2024", None), ("1/0/2024", date(2023, 12, 31)),
])
def test_dates(text, expected):
    assert parse_date(text, today=TODAY) == expected


@pytest.mark.parametrize("text, expected", [
    ("today", date(2024, 6, 12)), ("yesterday", date(2024, 6, 11)), ("Tuesday", date(2024, 6, 12)),
    ("wednesday", date(2024, 6, 5)), ("monday", date(2024, 6, 10)), ("thursday", date(2024, 6, 6)),
])
def test_symbolic_dates(text, expected):
    assert parse_date(text, today=TODAY, symbolic=True) == expected


@pytest.mark.parametrize("text, seconds", [
    ("1", 86400), ("0", 0), ("01:30", 5400), ("01:30:15", 5415), ("1.02:00", 93600), ("-01:00", -3600),
    ("00:00:01.5", 1), ("1:30", None), ("24:00", None), ("01:60", None), ("abc", None), ("", None),
])
def test_timespans(text, seconds):
    assert parse_timespan(text) == seconds


def test_numbers():
    assert parse_int("-5") == -5 and parse_int("+5") == 5
    assert parse_int("5.5") is None and parse_int("2147483648") is None and parse_int("٣") is None
    assert parse_decimal("1.5") == Decimal("1.5") and parse_decimal("1e3") == Decimal("1e3")
    assert parse_decimal("NaN") is None and parse_decimal("inf") is None and parse_decimal(".") is None
