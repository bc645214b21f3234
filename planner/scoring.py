"""Scoring response-time samples (pure): Group A and Group B p95 against thresholds, the score, Login VSI's baseline.

Definitions (docs/planner.md "Scoring"):
- p95 is the nearest-rank percentile: the values sorted ascending, the one at rank ceil(0.95 x n) (1-based). It is
  always a measured value, never an interpolation, and needs no minimum sample count.
- A run (one user count) passes when the p95 of its Group A samples is at or below threshold A and the p95 of its
  Group B samples at or below threshold B. A group with no samples in a run does not fail it, but a run needs at
  least one Group A or B sample to pass at all. Group C (background load) never counts.
- definition "run" (the paper, section IV.C): the score is the largest user count whose run passes.
  definition "desktop" (later View Planner versions): in each run, a desktop passes when its own A and B p95 pass;
  the score is the largest number of passing desktops over all runs.
- Login VSI's baseline: the 15 lowest Group A and B samples of the whole set, without the 2 lowest, averaged
  (fewer than 15 samples: all but the 2 lowest; null when fewer than 3).
"""
from __future__ import annotations

import json
import math
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import asdict, dataclass

GROUPS = ("A", "B", "C")
TIMED_GROUPS = ("A", "B")
DEFAULT_THRESHOLD_S = 1.5
DEFINITIONS = ("run", "desktop")


class PlannerInputError(ValueError):
    """Samples or a profile that cannot be used; the message names the line or field and what to fix."""


@dataclass(frozen=True)
class Sample:
    users: int
    desktop: str
    group: str
    operation: str
    seconds: float


def nearest_rank(values: Iterable[float], fraction: float = 0.95) -> float | None:
    """The nearest-rank percentile of `values` (None for no values)."""
    ordered = sorted(values)
    if not ordered:
        return None
    rank = max(1, math.ceil(fraction * len(ordered)))
    return ordered[rank - 1]


def _field_error(number: int, message: str) -> PlannerInputError:
    return PlannerInputError(f"line {number}: {message}")


def sample_from_dict(obj: object, number: int = 1) -> Sample:
    """One sample from its JSON object; raises PlannerInputError naming line `number` and the field."""
    if not isinstance(obj, dict):
        raise _field_error(number, "expected a JSON object like {\"users\": 96, \"desktop\": \"d1\", \"group\": \"A\", "
                                   "\"operation\": \"word-modify\", \"seconds\": 0.41}")
    missing = [k for k in ("users", "desktop", "group", "operation", "seconds") if k not in obj]
    if missing:
        raise _field_error(number, f"missing field(s) {', '.join(missing)}")
    users, desktop, group, operation, seconds = (obj[k] for k in ("users", "desktop", "group", "operation", "seconds"))
    if isinstance(users, bool) or not isinstance(users, int) or users < 1:
        raise _field_error(number, f"users must be a positive integer, got {users!r}")
    if not isinstance(desktop, str) or not desktop:
        raise _field_error(number, f"desktop must be a non-empty string, got {desktop!r}")
    if group not in GROUPS:
        raise _field_error(number, f"unknown group {group!r}: use one of A (interactive), B (I/O), C (background)")
    if not isinstance(operation, str) or not operation:
        raise _field_error(number, f"operation must be a non-empty string, got {operation!r}")
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not math.isfinite(seconds) \
            or seconds < 0:
        raise _field_error(number, f"seconds must be a finite number >= 0, got {seconds!r}")
    return Sample(users, desktop, group, operation, float(seconds))


def parse_samples(lines: Iterable[str]) -> list[Sample]:
    """Samples from JSON Lines (blank lines skipped); raises PlannerInputError with the 1-based line number."""
    out = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise _field_error(number, f"not valid JSON ({exc.msg} at column {exc.colno})") from None
        out.append(sample_from_dict(obj, number))
    return out


def vsi_baseline(samples: Iterable[Sample]) -> float | None:
    """Login VSI's baseline over the Group A and B samples (see the module's docstring)."""
    lowest = sorted(s.seconds for s in samples if s.group in TIMED_GROUPS)[:15]
    kept = lowest[2:]
    return sum(kept) / len(kept) if kept else None


def _passes(a: float | None, b: float | None, threshold_a: float, threshold_b: float) -> bool:
    if a is None and b is None:
        return False
    return (a is None or a <= threshold_a) and (b is None or b <= threshold_b)


@dataclass
class RunScore:
    users: int
    group_a_p95_s: float | None
    group_b_p95_s: float | None
    passed: bool
    samples: int
    desktops_passed: int


def score_runs(samples: Iterable[Sample], threshold_a: float = DEFAULT_THRESHOLD_S,
               threshold_b: float = DEFAULT_THRESHOLD_S, definition: str = "run") -> dict:
    """The score and the per-run figures, as `vdi planner score` prints them."""
    if definition not in DEFINITIONS:
        raise PlannerInputError(f"unknown score definition {definition!r}: use one of {', '.join(DEFINITIONS)}")
    for name, value in (("threshold A", threshold_a), ("threshold B", threshold_b)):
        if not math.isfinite(value) or value <= 0:
            raise PlannerInputError(f"{name} must be a positive number of seconds, got {value!r}")
    samples = list(samples)
    by_users: dict[int, list[Sample]] = defaultdict(list)
    for sample in samples:
        by_users[sample.users].append(sample)
    runs = []
    for users in sorted(by_users):
        run = by_users[users]
        a = nearest_rank(s.seconds for s in run if s.group == "A")
        b = nearest_rank(s.seconds for s in run if s.group == "B")
        per_desktop: dict[str, list[Sample]] = defaultdict(list)
        for sample in run:
            per_desktop[sample.desktop].append(sample)
        desktops_passed = sum(
            _passes(nearest_rank(s.seconds for s in mine if s.group == "A"),
                    nearest_rank(s.seconds for s in mine if s.group == "B"), threshold_a, threshold_b)
            for mine in per_desktop.values())
        runs.append(RunScore(users, a, b, _passes(a, b, threshold_a, threshold_b), len(run), desktops_passed))
    if definition == "run":
        score = max((r.users for r in runs if r.passed), default=0)
    else:
        score = max((r.desktops_passed for r in runs), default=0)
    return {
        "score": score,
        "runs": [asdict(r) for r in runs],
        "threshold_a_s": threshold_a,
        "threshold_b_s": threshold_b,
        "definition": definition,
        "percentile": "p95, nearest rank",
        "vsi_baseline_s": vsi_baseline(samples),
    }
