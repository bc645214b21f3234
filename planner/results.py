"""A run's results in one shape (the JSON the planner posts to the manager, the manager's JSON export, the report's
input) and its CSV export; the summary's figures (score, watermark against guest time) derive from the samples."""
from __future__ import annotations

import csv
import io
import statistics
from typing import Any

from planner.scoring import Sample, score_runs

SAMPLE_FIELDS = ("users", "desktop", "iteration", "seq", "app", "operation", "group", "code", "started_s", "guest_s",
                 "client_s", "end_mark_seen", "ok", "attempts", "error")


def measured_seconds(sample: dict) -> float | None:
    """The response time a sample scores with: the client's (watermarks, as the user sees it) when it was measured,
    else the guest's."""
    return sample["client_s"] if sample.get("client_s") is not None else sample.get("guest_s")


def scoring_samples(samples: list[dict]) -> list[Sample]:
    return [Sample(s["users"], s["desktop"], s["group"], f"{s['app']}-{s['operation']}", measured_seconds(s))
            for s in samples if s["ok"] and measured_seconds(s) is not None]


def watermark_vs_guest_ms(samples: list[dict]) -> list[float]:
    """Client-side (watermark) minus guest-side time of every operation measured both ways, in ms."""
    return [(s["client_s"] - s["guest_s"]) * 1000 for s in samples
            if s.get("ok") and s.get("client_s") is not None and s.get("guest_s") is not None]


def summarise(samples: list[dict], threshold_a: float, threshold_b: float, definition: str = "run") -> dict[str, Any]:
    diffs = watermark_vs_guest_ms(samples)
    return {
        "scores": score_runs(scoring_samples(samples), threshold_a, threshold_b, definition),
        "operations": len(samples),
        "failed": sum(not s["ok"] for s in samples),
        "watermark_vs_guest_median_ms": round(statistics.median(diffs), 1) if diffs else None,
        "watermark_measured": len(diffs),
        "end_marks_seen": sum(bool(s.get("end_mark_seen")) for s in samples),
    }


def samples_csv(samples: list[dict]) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=SAMPLE_FIELDS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for sample in samples:
        writer.writerow({k: "" if sample.get(k) is None else sample.get(k) for k in SAMPLE_FIELDS})
    return out.getvalue()
