"""core.schedule: recurring opening hours on the pool's local calendar (weekdays, midnight crossings, DST)."""
from __future__ import annotations

import datetime as dt

import pytest

from core import schedule

UTC = dt.timezone.utc
OFFICE = schedule.parse([{"days": ["mon", "tue", "wed", "thu", "fri"], "start": "08:00", "end": "18:00"}])
NIGHT = schedule.parse([{"days": ["fri"], "start": "22:00", "end": "06:00"}])


def at(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text).astimezone(UTC)


def test_office_hours_open_and_close_in_local_time():
    # 2026-03-02 is a Monday; Paris is UTC+1 in winter
    assert schedule.open_span(OFFICE, "Europe/Paris", at("2026-03-02T07:59:00+01:00")) is None
    span = schedule.open_span(OFFICE, "Europe/Paris", at("2026-03-02T08:00:00+01:00"))
    assert span == (at("2026-03-02T07:00:00+00:00"), at("2026-03-02T17:00:00+00:00"))
    assert schedule.open_span(OFFICE, "Europe/Paris", at("2026-03-02T18:00:00+01:00")) is None  # the end is open
    assert schedule.open_span(OFFICE, "Europe/Paris", at("2026-03-07T12:00:00+01:00")) is None  # Saturday
    assert schedule.next_opening(OFFICE, "Europe/Paris", at("2026-03-06T19:00:00+01:00")) == \
        at("2026-03-09T08:00:00+01:00")  # Friday evening: Monday morning


def test_a_window_crossing_midnight_runs_into_the_next_day():
    # 2026-03-06 is a Friday
    span = schedule.open_span(NIGHT, "UTC", at("2026-03-07T05:59:00+00:00"))  # Saturday early morning
    assert span == (at("2026-03-06T22:00:00+00:00"), at("2026-03-07T06:00:00+00:00"))
    assert schedule.open_span(NIGHT, "UTC", at("2026-03-07T06:00:00+00:00")) is None
    assert schedule.open_span(NIGHT, "UTC", at("2026-03-06T05:00:00+00:00")) is None  # Thursday's night: no window


def test_touching_windows_are_one_span():
    windows = schedule.parse([{"days": ["mon"], "start": "08:00", "end": "12:00"},
                              {"days": ["mon"], "start": "12:00", "end": "00:00"},
                              {"days": ["tue"], "start": "00:00", "end": "02:00"}])
    span = schedule.open_span(windows, "UTC", at("2026-03-02T09:00:00+00:00"))
    assert span == (at("2026-03-02T08:00:00+00:00"), at("2026-03-03T02:00:00+00:00"))


@pytest.mark.parametrize("day,hours", [("2026-03-27", 10), ("2026-03-30", 10)])
def test_office_hours_keep_their_local_times_across_spring_forward(day, hours):
    # Paris moves to UTC+2 on Sunday 2026-03-29: 08:00 local is 07:00Z before and 06:00Z after
    offset = "+01:00" if day < "2026-03-29" else "+02:00"
    span = schedule.open_span(OFFICE, "Europe/Paris", at(f"{day}T12:00:00{offset}"))
    assert span[0] == at(f"{day}T08:00:00{offset}") and span[1] - span[0] == dt.timedelta(hours=hours)
    assert span[0].hour == (7 if offset == "+01:00" else 6)


def test_a_night_window_over_the_autumn_change_is_an_hour_longer():
    # New York falls back on Sunday 2026-11-01 at 02:00 (EDT -> EST): Saturday 22:00 to Sunday 06:00 lasts 9 hours
    windows = schedule.parse([{"days": ["sat"], "start": "22:00", "end": "06:00"}])
    span = schedule.open_span(windows, "America/New_York", at("2026-11-01T01:30:00-04:00"))
    assert span == (at("2026-10-31T22:00:00-04:00"), at("2026-11-01T06:00:00-05:00"))
    assert span[1] - span[0] == dt.timedelta(hours=9)
    assert schedule.open_span(windows, "America/New_York", at("2026-11-01T06:00:00-05:00")) is None


def test_a_start_the_spring_change_skips_opens_after_the_gap():
    # New York springs forward on 2026-03-08 at 02:00 -> 03:00: 02:30 does not exist that night
    windows = schedule.parse([{"days": ["sun"], "start": "02:30", "end": "05:00"}])
    assert schedule.open_span(windows, "America/New_York", at("2026-03-08T03:10:00-04:00")) is None
    span = schedule.open_span(windows, "America/New_York", at("2026-03-08T03:40:00-04:00"))
    assert span == (at("2026-03-08T03:30:00-04:00"), at("2026-03-08T05:00:00-04:00"))


@pytest.mark.parametrize("raw,words", [
    ([{"days": [], "start": "08:00", "end": "18:00"}], "schedule[0].days"),
    ([{"days": ["mon", "xyz"], "start": "08:00", "end": "18:00"}], "'xyz'"),
    ([{"days": ["mon"], "start": "8:00", "end": "18:00"}], "schedule[0].start"),
    ([{"days": ["mon"], "start": "08:00", "end": "24:00"}], "schedule[0].end"),
])
def test_bad_windows_say_what_is_wrong(raw, words):
    with pytest.raises(ValueError, match=words.replace("[", r"\[").replace("]", r"\]")):
        schedule.parse(raw)


@pytest.mark.parametrize("name", ["Europe/Atlantis", "Europe", "/etc/localtime", "../../etc/passwd", "localtime", ""])
def test_unknown_time_zone(name):
    with pytest.raises(ValueError, match="not an IANA time zone"):
        schedule.zone(name)


def test_windows_describe_themselves_compactly():
    assert OFFICE[0].describe() == "mon-fri 08:00-18:00"
    weekend = schedule.parse([{"days": ["sun", "sat", "mon", "wed"], "start": "22:00", "end": "02:00"}])
    assert weekend[0].describe() == "mon,wed,sat,sun 22:00-02:00"
