"""The report (HTML with PNG figures) and the exports from a run's results, on a synthetic run."""
from __future__ import annotations

import csv
import io

from planner.report import FIGURES, figures, write_report
from planner.results import samples_csv, summarise

PNG = b"\x89PNG\r\n\x1a\n"


def sample(users, desktop, iteration, seq, app, op, group, started, guest, client=None, ok=True):
    return {"users": users, "desktop": desktop, "iteration": iteration, "seq": seq, "app": app, "operation": op,
            "group": group, "code": 11, "started_s": started, "guest_s": guest, "client_s": client, "ok": ok,
            "attempts": 1 if ok else 4, "error": "" if ok else "exit 1"}


def a_run():
    samples = [sample(2, "d1", 0, 1, "word", "type", "A", 0.0, 0.4, 0.45),
               sample(2, "d1", 0, 2, "word", "save", "B", 3.0, 0.2, 0.27),
               sample(2, "d2", 0, 1, "browser", "browse", "A", 0.5, 0.9, 0.93),
               sample(2, "d2", 0, 2, "archive", "compress", "C", 4.0, None, None, ok=False),
               sample(4, "d1", 0, 3, "word", "type", "A", 20.0, 1.9, 2.0)]
    summary = summarise(samples, 1.5, 1.5)
    summary["host_stats"] = [{"host": "h1", "t": 0.0, "cpu": 10, "mem": 40}, {"host": "h1", "t": 5.0, "cpu": 90,
                                                                             "mem": 45}]
    return {"id": "r1", "name": "unit <run>", "mode": "remote", "users": 4, "profile": {}, "summary": summary,
            "samples": samples}


def test_summary_scores_on_the_client_time_and_compares_it_with_the_guest():
    summary = a_run()["summary"]
    assert summary["scores"]["score"] == 2  # 4 users: Group A p95 2.0 s > 1.5 s
    assert summary["failed"] == 1
    assert summary["watermark_measured"] == 4
    assert summary["watermark_vs_guest_median_ms"] == 60.0  # 50, 70, 30, 100 ms


def test_figures_are_png_and_the_page_names_them(tmp_path):
    run = a_run()
    made = figures(run)
    assert set(made) == set(FIGURES) and all(png.startswith(PNG) for png in made.values())
    page = write_report(run, tmp_path / "report")
    text = (tmp_path / "report" / "report.html").read_text()
    assert page.endswith("report.html")
    assert "unit &lt;run&gt;" in text and "<run>" not in text  # escaped
    for name in FIGURES:
        assert f"src='{name}.png'" in text and (tmp_path / "report" / f"{name}.png").exists()


def test_csv_has_a_row_per_sample():
    rows = list(csv.DictReader(io.StringIO(samples_csv(a_run()["samples"]))))
    assert len(rows) == 5
    assert rows[3]["guest_s"] == "" and rows[3]["ok"] == "False"
