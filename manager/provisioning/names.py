"""Desktop names from a pool's pattern: `eng-###` -> eng-001, eng-002, ... Pure functions."""
from __future__ import annotations

import re
from collections.abc import Iterable

from core.errors import Invalid

_PATTERN = re.compile(r"^(?P<prefix>[A-Za-z0-9][A-Za-z0-9._-]*?|)(?P<hashes>#+)(?P<suffix>[A-Za-z0-9._-]*)$")
MAX_NAME = 63


def parse_pattern(pattern: str) -> tuple[str, int, str]:
    """(prefix, width, suffix) of a pattern with exactly one run of '#'. Raises Invalid otherwise."""
    match = _PATTERN.match(pattern or "")
    if match is None or pattern.count("#") != len(match.group("hashes")) or not pattern[0].isalnum():
        raise Invalid(f"name pattern {pattern!r} must be letters, digits, '.', '_' or '-' with one run of '#' "
                      "for the number, starting with a letter or digit (e.g. eng-###)")
    prefix, hashes, suffix = match.group("prefix"), match.group("hashes"), match.group("suffix")
    if len(prefix) + len(hashes) + len(suffix) > MAX_NAME:
        raise Invalid(f"name pattern {pattern!r} makes names longer than {MAX_NAME} characters")
    return prefix, len(hashes), suffix


def capacity(pattern: str) -> int:
    """How many distinct names the pattern can make (### -> 999, numbering starts at 1)."""
    _prefix, width, _suffix = parse_pattern(pattern)
    return 10 ** width - 1


def format_name(pattern: str, number: int) -> str:
    prefix, width, suffix = parse_pattern(pattern)
    if not 1 <= number < 10 ** width:
        raise Invalid(f"number {number} does not fit pattern {pattern!r} ({width} digits)")
    return f"{prefix}{number:0{width}d}{suffix}"


def number_of(pattern: str, name: str) -> int | None:
    """The number a name made from `pattern` carries, or None if the name is not from this pattern."""
    prefix, width, suffix = parse_pattern(pattern)
    match = re.fullmatch(re.escape(prefix) + r"(\d{%d})" % width + re.escape(suffix), name)
    return int(match.group(1)) if match else None


def next_names(pattern: str, taken: Iterable[str], count: int) -> list[str]:
    """The `count` lowest-numbered names of the pattern not in `taken`. Raises Invalid when the pattern runs
    out of numbers (saying how many it can still make)."""
    if count < 0:
        raise Invalid("count cannot be negative")
    taken_set = set(taken)
    limit = capacity(pattern)
    out: list[str] = []
    number = 1
    while len(out) < count and number <= limit:
        name = format_name(pattern, number)
        if name not in taken_set:
            out.append(name)
        number += 1
    if len(out) < count:
        raise Invalid(f"name pattern {pattern!r} can make only {limit} names and {len(out)} are still free; "
                      f"{count} were asked for: use more '#' (e.g. {pattern.replace('#', '##', 1)})")
    return out
