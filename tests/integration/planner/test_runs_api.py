"""Planner runs in the manager (Postgres): stored by POST /planner/runs, listed, exported as JSON and CSV, reported as
HTML with its figures, listed in the admin console; who may do what; bad input named. The planner operations' route
on a desktop that is not running (the real guest's side is tests/integration/planner/test_real_run.py)."""
from __future__ import annotations

import csv
import io

import pytest

from core.enums import Role
from manager import db
from manager.models import Desktop
from tests.harness.tokens import token_for

pytestmark = [pytest.mark.postgres]
API = "/api/v1"


def samples() -> list[dict]:
    out = []
    for i, (group, guest, client) in enumerate([("A", 0.4, 0.46), ("B", 0.9, 0.95), ("A", 1.2, None),
                                                 ("C", 5.0, 5.1)]):
        out.append({"users": 2, "desktop": f"d{i % 2}", "iteration": 0, "seq": i + 1, "app": "word",
                    "operation": f"op{i}", "group": group, "code": 10 + i, "started_s": i * 2.0, "guest_s": guest,
                    "client_s": client, "end_mark_seen": client is not None, "ok": True, "attempts": 1,
                    "error": ""})
    out.append({**out[0], "seq": 9, "ok": False, "guest_s": None, "client_s": None, "end_mark_seen": False, "attempts": 4,
                "error": "exit 1"})
    return out


def a_run() -> dict:
    found = samples()
    return {"name": "two desktops", "mode": "remote", "users": 2, "profile": {"workload": {"name": "default"}},
            "summary": {"host_stats": [{"host": "h", "t": 0, "cpu": 5, "mem": 9}], "flagged": {"d1": ["word dropped"]},
                        "admin": {"logon_storm": {"count": 2, "seconds": 1.5, "errors": 0}}},
            "samples": found}


def test_a_run_is_stored_exported_and_reported(client):
    stored = client.post(f"{API}/planner/runs", json=a_run())
    assert stored.status_code == 201, stored.text
    run_id = stored.json()["id"]
    assert stored.json()["report"] == f"{API}/planner/runs/{run_id}/report"

    listed = client.get(f"{API}/planner/runs").json()
    assert [(r["id"], r["score"], r["samples"], r["mode"]) for r in listed] == [(run_id, 2, 5, "remote")]

    export = client.get(f"{API}/planner/runs/{run_id}").json()
    assert export["samples"] == samples()
    assert export["created_by"] == "admin@local"
    # the manager scores the samples itself (client time when measured): 2 users pass at 1.5 s, not at 1.0 s
    assert export["summary"]["scores"]["score"] == 2 and export["summary"]["watermark_vs_guest_median_ms"] == 60.0
    assert export["summary"]["flagged"] == {"d1": ["word dropped"]}
    strict = client.post(f"{API}/planner/runs", json={**a_run(), "threshold_a_s": 1.0}).json()["id"]
    assert client.get(f"{API}/planner/runs/{strict}").json()["summary"]["scores"]["score"] == 0

    rows = list(csv.DictReader(io.StringIO(client.get(f"{API}/planner/runs/{run_id}/samples.csv").text)))
    assert len(rows) == 5 and rows[2]["client_s"] == "" and rows[4]["error"] == "exit 1"

    report = client.get(f"{API}/planner/runs/{run_id}/report")
    assert report.status_code == 200 and report.headers["content-type"].startswith("text/html")
    assert report.text.count("src='data:image/png;base64,") == 5
    assert "two desktops" in report.text


def test_the_admin_console_links_the_report(client):
    # a free-form profile of another shape still makes a report
    run_id = client.post(f"{API}/planner/runs", json={**a_run(), "profile": {"workload": "mine"}}).json()["id"]
    page = client.get("/admin/planner")
    assert page.status_code == 200
    assert f'href="/admin/planner/{run_id}/report" aria-label="Report of run two desktops"' in page.text
    assert 'href="/admin/planner"' in page.text  # the navigation's link
    assert client.get(f"/admin/planner/{run_id}/report").text.count("data:image/png") == 5


def test_who_may_read_and_run(anon_client, client):
    run_id = client.post(f"{API}/planner/runs", json=a_run()).json()["id"]
    helpdesk, plain = token_for(Role.HELP_DESK, "helper"), token_for(None, "plain")
    anon_client.headers.pop("Authorization", None)
    assert anon_client.get(f"{API}/planner/runs/{run_id}/report", headers=helpdesk).status_code == 200
    assert anon_client.post(f"{API}/planner/runs", json=a_run(), headers=helpdesk).status_code == 403
    assert anon_client.get(f"{API}/planner/runs/{run_id}", headers=plain).status_code == 403
    assert anon_client.get(f"{API}/planner/runs").status_code == 401


@pytest.mark.parametrize("change, where", [
    ({"group": "D"}, "group"), ({"app": "../bin/sh"}, "app"), ({"guest_s": -1}, "guest_s"), ({"seq": 1000}, "seq"),
    ({"summary": {"scores": {"score": 999}}}, "scores"), ({"summary": {"host_stats": [{"host": "h"}]}}, "host_stats")])
def test_bad_runs_are_named(client, change, where):
    run = a_run()
    if "summary" in change:
        run.update(change)
    else:
        run["samples"][0].update(change)
    refused = client.post(f"{API}/planner/runs", json=run)
    assert refused.status_code == 422
    assert where in refused.text
    assert client.get(f"{API}/planner/runs/no-such-run/report").status_code == 404


def test_an_operation_needs_a_running_desktop(client):
    with db.session_scope() as s:
        desktop = Desktop(name="planner-off")
        s.add(desktop)
        s.flush()
        desktop_id = desktop.id
    body = {"app": "word", "op": "open", "seq": 1, "code": 11}
    refused = client.post(f"{API}/desktops/{desktop_id}/planner/op", json=body)
    assert refused.status_code == 409 and "planner-off" in refused.json()["detail"]
    assert client.post(f"{API}/desktops/nope/planner/op", json=body).status_code == 404
    assert client.post(f"{API}/desktops/{desktop_id}/planner/op", json={**body, "app": "x y"}).status_code == 422
    assert client.get(f"{API}/desktops/{desktop_id}/planner/apps").status_code == 409
