"""Recurring opening hours of a time-based pool: windows such as Mon-Fri 08:00-18:00, in an IANA time zone.

A window is a set of weekdays, a start and an end wall-clock time. An end at or before the start crosses midnight
(Fri 22:00-06:00 runs into Saturday morning; start == end is a whole day). Each occurrence is placed on the local
calendar of the pool's time zone and only then turned into UTC, so a window keeps its local hours across daylight
saving changes (08:00-18:00 stays 08:00-18:00 local; that day's occurrence is an hour shorter or longer). A start or
end that a change skips (02:30 on a spring-forward night) is read with the offset before the change (PEP 495 fold=0):
it falls one hour later by the clock. Overlapping or touching occurrences are one open span.

Pure: stored as plain JSON on the pool ([{"days": ["mon", ...], "start": "08:00", "end": "18:00"}]).
"""
from __future__ import annotations

import datetime as dt
import functools
from dataclasses import dataclass
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError, available_timezones

DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
MAX_WINDOWS = 28
_UTC = dt.timezone.utc


@dataclass(frozen=True)
class Window:
    days: frozenset[int]  # 0 = Monday, as date.weekday()
    start: dt.time
    end: dt.time

    @property
    def crosses_midnight(self) -> bool:
        return self.end <= self.start

    def describe(self) -> str:
        """e.g. "mon-fri 08:00-18:00", "sat,sun 22:00-02:00" (the form the console's editor reads back)."""
        runs: list[list[int]] = []
        for day in sorted(self.days):
            if runs and runs[-1][-1] == day - 1:
                runs[-1].append(day)
            else:
                runs.append([day])
        days = ",".join(",".join(DAYS[d] for d in r) if len(r) < 3 else f"{DAYS[r[0]]}-{DAYS[r[-1]]}" for r in runs)
        return f"{days} {self.start:%H:%M}-{self.end:%H:%M}"


@functools.cache
def _known_zones() -> frozenset[str]:
    return frozenset(available_timezones())


def zone(name: str) -> ZoneInfo:
    """The IANA time zone `name` (ValueError naming it when unknown). Only the database's names: not a file path,
    nor the host's own "localtime"."""
    if name not in _known_zones() or name in ("localtime", "posixrules", "Factory"):
        raise ValueError(f"time_zone: {name!r} is not an IANA time zone (e.g. Europe/Paris, UTC)")
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        raise ValueError(f"time_zone: {name!r} is not an IANA time zone (e.g. Europe/Paris, UTC)") from None


def _clock(value: str, what: str) -> dt.time:
    try:
        hours, minutes = value.split(":")
        if len(hours) != 2 or len(minutes) != 2:
            raise ValueError
        return dt.time(int(hours), int(minutes))
    except (ValueError, AttributeError):
        raise ValueError(f"{what}: {value!r} is not a time of day HH:MM (00:00 to 23:59)") from None


def parse(raw: list[dict]) -> list[Window]:
    """The windows of a pool's stored (or requested) schedule; ValueError saying which window is wrong and why."""
    if len(raw) > MAX_WINDOWS:
        raise ValueError(f"schedule: at most {MAX_WINDOWS} windows")
    out = []
    for i, item in enumerate(raw):
        where = f"schedule[{i}]"
        days = item.get("days") or []
        unknown = [d for d in days if d not in DAYS]
        if not days or unknown:
            raise ValueError(f"{where}.days: give one or more of {', '.join(DAYS)}"
                             + (f" (not {', '.join(map(repr, unknown))})" if unknown else ""))
        out.append(Window(frozenset(DAYS.index(d) for d in days), _clock(item.get("start"), f"{where}.start"),
                          _clock(item.get("end"), f"{where}.end")))
    return out


def _occurrences(windows: list[Window], tz: ZoneInfo, first: dt.date, last: dt.date) -> list[tuple[dt.datetime,
                                                                                                     dt.datetime]]:
    """Each window's occurrences starting on the local days first..last, as UTC (start, end), sorted."""
    out = []
    day = first
    while day <= last:
        for w in windows:
            if day.weekday() not in w.days:
                continue
            start = dt.datetime.combine(day, w.start, tzinfo=tz)
            end = dt.datetime.combine(day + dt.timedelta(days=1) if w.crosses_midnight else day, w.end, tzinfo=tz)
            out.append((start.astimezone(_UTC), end.astimezone(_UTC)))
        day += dt.timedelta(days=1)
    return sorted(out)


def open_span(windows: list[Window], tz_name: str, now: dt.datetime) -> tuple[dt.datetime, dt.datetime] | None:
    """The open span (overlapping and touching occurrences merged) that contains `now`, or None when closed.
    `now` is an aware datetime (UTC)."""
    if not windows:
        return None
    tz = zone(tz_name)
    today = now.astimezone(tz).date()
    # a week and a day each side covers any merged span of windows that do not run all week
    spans = _occurrences(windows, tz, today - dt.timedelta(days=8), today + dt.timedelta(days=8))
    current = None
    for start, end in spans:
        if start <= now < end:
            current = (start, end) if current is None else (min(current[0], start), max(current[1], end))
    if current is None:
        return None
    grown = True
    while grown:  # extend through occurrences that start before (or when) the span ends
        grown = False
        for start, end in spans:
            if start <= current[1] < end:
                current = (current[0], end)
                grown = True
    return current


def next_opening(windows: list[Window], tz_name: str, now: dt.datetime) -> dt.datetime | None:
    """When the schedule next opens after `now` (UTC), or None when it has no windows."""
    tz = zone(tz_name)
    today = now.astimezone(tz).date()
    later = [start for start, _end in _occurrences(windows, tz, today, today + dt.timedelta(days=8)) if start > now]
    return later[0] if later else None
