"""Reading the literal values of the search language: numbers, dates, time spans.

Pure functions shared by the lexer (which validates a value the moment it is complete, as upstream does)
and the compiler (which turns it into a bound parameter). Each returns None when the text is not a value of
that type, never raises.
"""
from __future__ import annotations

import re
from datetime import date, timedelta
from decimal import Decimal, InvalidOperation

INT32 = (-(2**31), 2**31 - 1)
INT64 = (-(2**63), 2**63 - 1)

_INT_RE = re.compile(r"[+-]?[0-9]+\Z")
_DECIMAL_RE = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?\Z")


def parse_int(text: str, bounds: tuple[int, int] = INT32) -> int | None:
    """Java `Integer.valueOf` semantics: optional sign, decimal digits, within `bounds`."""
    if not _INT_RE.match(text):
        return None
    number = int(text)
    return number if bounds[0] <= number <= bounds[1] else None


def parse_decimal(text: str) -> Decimal | None:
    """Java `new BigDecimal(text)` semantics (no NaN/Infinity, unlike Python's Decimal)."""
    if not _DECIMAL_RE.match(text):
        return None
    try:
        return Decimal(text)
    except InvalidOperation:  # pragma: no cover - the regex admits only finite numbers
        return None


# ---- dates -------------------------------------------------------------------------------------------
_MONTHS = {name: number for number, names in enumerate((
    ("january", "jan"), ("february", "feb"), ("march", "mar"), ("april", "apr"), ("may",),
    ("june", "jun"), ("july", "jul"), ("august", "aug"), ("september", "sep", "sept"),
    ("october", "oct"), ("november", "nov"), ("december", "dec")), start=1) for name in names}
WEEKDAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
_WEEKDAY_ABBREV = {day[:3]: index for index, day in enumerate(WEEKDAYS)}
SYMBOLIC_DATES = ("today", "yesterday") + WEEKDAYS

# en-US java.text.DateFormat styles: SHORT M/d/yy, MEDIUM MMM d, y, LONG MMMM d, y, FULL EEEE, MMMM d, y.
# DateFormat.parse reads from the start and ignores whatever follows the date.
_SHORT_RE = re.compile(r"([0-9]+)/([0-9]+)/([0-9]+)")
_MEDIUM_RE = re.compile(r"([A-Za-z]+) +([0-9]+), *([0-9]+)")
_FULL_RE = re.compile(r"([A-Za-z]+), *([A-Za-z]+) +([0-9]+), *([0-9]+)")


def _year(digits: str, today: date) -> int:
    """Two-digit years fall in the window [today-80y, today+20y), like SimpleDateFormat's 'yy'."""
    year = int(digits)
    if len(digits) == 2:
        start = today.year - 80
        year += (start // 100) * 100
        if year < start:
            year += 100
    return year


def _lenient(year: int, month: int, day: int) -> date | None:
    """Lenient calendar arithmetic: month 15 is March of the next year, day 0 the last of the month before."""
    year += (month - 1) // 12
    month = (month - 1) % 12 + 1
    if not 1 <= year <= 9999:
        return None
    try:
        return date(year, month, 1) + timedelta(days=day - 1)
    except OverflowError:
        return None


def _month(name: str) -> int | None:
    return _MONTHS.get(name.lower())


def parse_date(text: str, *, today: date, symbolic: bool = False) -> date | None:
    """The calendar day a date literal names (upstream `DateUtils.parse` with the en-US locale).

    Accepts `1/15/24`, `01/15/2024`, `Jan 15, 2024`, `January 15, 2024`, `Monday, January 15, 2024`
    (anything after the date is ignored, as upstream); with `symbolic`, also `today`, `yesterday` and a
    weekday name (the most recent such day 2-7 days ago; yesterday's weekday name means today, as upstream).
    ISO `2024-01-15` is not a date here, as upstream.
    """
    word = text.strip().lower()
    if symbolic and word in SYMBOLIC_DATES:
        if word == "today":
            return today
        if word == "yesterday":
            return today - timedelta(days=1)
        back = (today.weekday() - WEEKDAYS.index(word)) % 7
        back = {0: 7, 1: 0}.get(back, back)
        return today - timedelta(days=back)
    match = _SHORT_RE.match(text)
    if match:
        return _lenient(_year(match[3], today), int(match[1]), int(match[2]))
    match = _FULL_RE.match(text)
    if match and match[1].lower()[:3] in _WEEKDAY_ABBREV and _month(match[2]):
        return _lenient(_year(match[4], today), _month(match[2]) or 0, int(match[3]))
    match = _MEDIUM_RE.match(text)
    if match and _month(match[1]):
        return _lenient(_year(match[3], today), _month(match[1]) or 0, int(match[2]))
    return None


# ---- time spans (.NET TimeSpan.Parse as upstream's compat layer reads it) ------------------------------
_TIMESPAN_RE = re.compile(
    r"(-)?(?:(?P<days_only>[0-9]+)|(?:(?P<days>[0-9]+)\.)?(?P<h>[0-9]{2}):(?P<m>[0-9]{2})"
    r"(?::(?P<s>[0-9]{2})(?:\.(?P<f>[0-9]+))?)?)\Z")


def parse_timespan(text: str) -> int | None:
    """Whole seconds of a time span: `N` is N days (not minutes), `hh:mm[:ss[.ff]]`, `d.hh:mm[:ss]`."""
    match = _TIMESPAN_RE.match(text)
    if not match:
        return None
    if match["days_only"] is not None:
        seconds = int(match["days_only"]) * 86400
    else:
        hours, minutes, secs = int(match["h"]), int(match["m"]), int(match["s"] or 0)
        if hours > 23 or minutes > 59 or secs > 59:
            return None
        seconds = int(match["days"] or 0) * 86400 + hours * 3600 + minutes * 60 + secs
    if seconds > INT64[1]:
        return None
    return -seconds if match[1] else seconds
