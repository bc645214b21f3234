"""The dashboard: GET /api/v1/dashboard counts what is in the database (hosts, desktops by state, live sessions,
pool usage, open alerts, jobs), and /admin/dashboard shows the same numbers (every figure on the page is marked with
its path in the API's answer, which the test reads back). The live tools (events drawer, jobs tray) are on every
page. Who may see the dashboard: tests/integration/identity/test_rbac.py."""
from __future__ import annotations

import datetime as dt
import html
import re

import pytest

from core.enums import HostStatus, JobState, PowerState, SessionState, Severity, TaskState
from manager import db
from manager.models import (Alert, Cluster, Desktop, DesktopSession, Event, Host, Job, Pool, Template, User,
                            utcnow)


@pytest.fixture
def inventory(app):
    """Two hosts up and one down; pool "full" (size 10, 9 held: 90 %) and pool "roomy" (size 8, 4 desktops, 1 held);
    desktops in several states; six console sessions (one ended, one pending); alerts old and new; jobs in every
    state."""
    now = utcnow()
    with db.session_scope() as session:
        cluster = Cluster(name="dash-cluster")
        template = Template(name="dash-tpl")
        users = [User(username=f"dash-user-{i}") for i in range(10)]
        session.add_all([cluster, template, *users])
        session.flush()
        hosts = [Host(name="dash-a", cluster_id=cluster.id, status=HostStatus.UP, cpus=16, memory_mib=65536,
                      cpu_usage=50, mem_usage=25, active_desktops=7),
                 Host(name="dash-b", cluster_id=cluster.id, status=HostStatus.UP, cpus=48, memory_mib=196608,
                      cpu_usage=10, mem_usage=75, active_desktops=3),
                 Host(name="dash-c", cluster_id=cluster.id, status=HostStatus.DOWN, cpus=8, memory_mib=8192,
                      cpu_usage=0, mem_usage=0)]
        full = Pool(name="full", template_id=template.id, size=10, prestarted=2)
        roomy = Pool(name="roomy", template_id=template.id, size=8, prestarted=1)
        session.add_all([*hosts, full, roomy])
        session.flush()
        desktops = []
        for i in range(10):  # pool "full": 9 held, the free one up (ready)
            desktops.append(Desktop(name=f"full-{i}", pool_id=full.id, host_id=hosts[0].id,
                                    power_state=PowerState.UP if i < 7 or i == 9 else PowerState.DOWN,
                                    assigned_user_id=users[i].id if i < 9 else None))
        for i in range(4):  # pool "roomy": 1 held; of the 3 free ones one is starting (not ready yet), one up
            desktops.append(Desktop(name=f"roomy-{i}", pool_id=roomy.id,
                                    power_state={0: PowerState.SUSPENDED, 2: PowerState.UP}.get(i, PowerState.DOWN),
                                    task_state=TaskState.STARTING if i == 1 else None,
                                    assigned_user_id=users[0].id if i == 0 else None))
        desktops.append(Desktop(name="loose-0", power_state=PowerState.PAUSED, task_state=TaskState.REBOOTING))
        session.add_all(desktops)
        session.flush()
        session.add_all([
            DesktopSession(desktop_id=desktops[0].id, user_id=users[0].id, protocol="spice", state=SessionState.CONNECTED),
            DesktopSession(desktop_id=desktops[1].id, user_id=users[1].id, protocol="spice", state=SessionState.CONNECTED),
            DesktopSession(desktop_id=desktops[2].id, user_id=users[2].id, protocol="rdp", state=SessionState.CONNECTED),
            DesktopSession(desktop_id=desktops[3].id, user_id=users[3].id, protocol="rdp",
                           state=SessionState.DISCONNECTED),
            DesktopSession(desktop_id=desktops[4].id, user_id=users[4].id, protocol="vnc", state=SessionState.ENDED),
            DesktopSession(desktop_id=desktops[5].id, user_id=users[5].id, protocol="spice",
                           state=SessionState.PENDING)])
        session.add_all([
            Event(code="host.down", message="host dash-c is down", severity=Severity.ALERT, host_id=hosts[2].id,
                  time=now - dt.timedelta(minutes=5)),
            Event(code="desktop.failed", message="desktop full-3 failed", severity=Severity.ERROR,
                  desktop_id=desktops[3].id, time=now - dt.timedelta(minutes=1)),
            Event(code="desktop.slow", message="slow", severity=Severity.WARNING, time=now),
            Event(code="host.down", message="long ago", severity=Severity.ALERT, time=now - dt.timedelta(days=2))])
        session.add_all([  # alerts with a state (event_manager/alerts.py): two to see to, one resolved
            Alert(kind="host.unavailable", object_kind="host", object_id=hosts[2].id, object_name="dash-c",
                  message="host dash-c failed", opened_at=now - dt.timedelta(minutes=5)),
            Alert(kind="job.failed", object_kind="job", object_id="j-x", state="acknowledged", message="job x failed",
                  opened_at=now - dt.timedelta(minutes=1)),
            Alert(kind="storage.nearly_full", object_kind="storage_domain", object_id="sd", state="resolved",
                  message="was full", opened_at=now - dt.timedelta(days=1))])
        session.add_all([Job(kind="pool.resize", state=JobState.RUNNING, done=3, total=10, started_at=now),
                         Job(kind="pool.resize", state=JobState.PENDING),
                         Job(kind="desktop.reboot", state=JobState.SUCCEEDED)])
    return {"full": full.id, "roomy": roomy.id, "hosts": [h.id for h in hosts]}


def test_the_api_counts_what_is_there(inventory, client):
    response = client.get("/api/v1/dashboard")
    assert response.status_code == 200, response.text
    d = response.json()
    hosts = d["hosts"]
    assert (hosts["total"], hosts["by_status"]["up"], hosts["by_status"]["down"]) == (3, 2, 1)
    assert (hosts["cpus"], hosts["memory_mib"]) == (64, 262144)  # the hosts that are up
    assert hosts["cpu_usage"] == round((50 * 16 + 10 * 48) / 64)  # weighted by CPUs: 20
    assert hosts["mem_usage"] == round((25 * 65536 + 75 * 196608) / 262144)  # weighted by memory: 62.5, rounded half to even
    assert [h["name"] for h in d["busiest_hosts"]] == ["dash-b", "dash-a", "dash-c"]  # up by max(cpu, mem) first

    desktops = d["desktops"]
    assert desktops["total"] == 15
    assert {k: v for k, v in desktops["by_power_state"].items() if v} == {"up": 9, "down": 4, "suspended": 1,
                                                                          "paused": 1}
    assert set(desktops["by_power_state"]) == {s.value for s in PowerState}  # zeros included
    assert {k: v for k, v in desktops["by_task_state"].items() if v} == {"starting": 1, "rebooting": 1}
    assert desktops["busy"] == 2

    assert d["sessions"] == {"live": 5, "pending": 1, "connected": 3, "disconnected": 1,
                             "by_protocol": {"spice": 3, "rdp": 2, "vnc": 0}}

    pools = d["pools"]
    assert (pools["total"], pools["nearly_full"]) == (2, 1)
    full, roomy = pools["fullest"]
    assert full == {"id": inventory["full"], "name": "full", "pool_type": "automatic", "size": 10, "desktops": 10,
                    "assigned": 9, "free": 1, "prestarted": 2, "ready": 1, "in_use_pct": 90, "nearly_full": True}
    assert (roomy["name"], roomy["size"], roomy["desktops"], roomy["assigned"], roomy["free"], roomy["ready"],
            roomy["in_use_pct"], roomy["nearly_full"]) == ("roomy", 8, 4, 1, 3, 1, 12, False)  # 1 of max(8, 4)

    alerts = d["alerts"]
    assert alerts["open"] == 2 and alerts["window_hours"] == 24  # the warning and the 2-day-old alert are not
    assert [a["message"] for a in alerts["latest"]] == ["desktop full-3 failed", "host dash-c is down"]
    assert alerts["unresolved"] == 2
    assert [(a["message"], a["state"]) for a in alerts["unresolved_latest"]] == [
        ("job x failed", "acknowledged"), ("host dash-c failed", "open")]
    assert d["jobs"] == {"running": 1, "pending": 1}


def _page_figures(page: str) -> dict[str, str]:
    """path -> text of every figure outside the lists and the <template> rows."""
    page = re.sub(r"<template>.*?</template>", "", page, flags=re.S)
    page = re.sub(r'<tbody data-list=.*?</tbody>', "", page, flags=re.S)
    return {path: html.unescape(text) for path, text in
            re.findall(r'<span data-f="([^"]+)" data-fmt="(?:int|pct)">([^<]*)</span>', page)}


def _value(data, path: str):
    for key in path.split("."):
        data = data[key]
    return data


def test_the_pages_numbers_are_the_apis(inventory, admin_browser, client):
    page = admin_browser.get("/admin/dashboard")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    api = client.get("/api/v1/dashboard").json()
    figures = _page_figures(page.text)
    # every figure of the summary is on the page: hosts, desktops by each state and task, sessions, pools, alerts
    for path in ("hosts.total", "hosts.by_status.up", "hosts.cpu_usage", "desktops.total", "desktops.busy",
                 *(f"desktops.by_power_state.{s.value}" for s in PowerState),
                 *(f"desktops.by_task_state.{t.value}" for t in TaskState), "sessions.live", "sessions.connected", "sessions.pending",
                 "sessions.by_protocol.rdp", "pools.total", "pools.nearly_full", "alerts.open", "alerts.unresolved",
                 "jobs.running"):
        assert path in figures, path
    for path, text in figures.items():
        assert int(text.replace(",", "").replace(" %", "")) == _value(api, path), path

    # each listed pool's row: the API's counts, and the nearly full one flagged
    rows = re.findall(r'<tr data-key="([^"]+)" data-flag="nearly_full"\s*(class="flagged")?>(.*?)</tr>', page.text,
                      re.S)
    assert [key for key, _flag, _ in rows if key] == [p["id"] for p in api["pools"]["fullest"]]
    for (key, flagged, row), pool in zip([r for r in rows if r[0]], api["pools"]["fullest"]):
        cells = dict(re.findall(r'data-f="(\w+)" data-fmt="(?:int|pct)">([^<]*)<', row))
        for field in ("size", "assigned", "free", "prestarted", "ready", "in_use_pct"):
            assert int(cells[field].replace(",", "").replace(" %", "")) == pool[field], (pool["name"], field)
        assert bool(flagged) == pool["nearly_full"]
    assert re.search(rf'data-key="{inventory["full"]}"[^>]*class="flagged".*?≥ 90 % in use</span>', page.text, re.S)

    # hosts link to their pages, alerts to their object's page
    assert f'href="/admin/hosts/{inventory["hosts"][0]}"' in page.text
    assert f'<a href="/admin/hosts/{inventory["hosts"][2]}">host dash-c is down</a>' in page.text
    assert f'<a href="/admin/hosts/{inventory["hosts"][2]}">host dash-c failed</a>' in page.text
    assert '<a href="/admin/jobs/j-x">job x failed</a>' in page.text and "was full" not in page.text
    # the page polls the API for fresh figures
    assert "/dashboard.js" in page.text


def test_an_empty_installation_has_a_dashboard(admin_browser, client):
    api = client.get("/api/v1/dashboard").json()
    assert (api["hosts"]["total"], api["desktops"]["total"], api["pools"]["total"], api["alerts"]["open"]) == (0, 0, 0, 0)
    page = admin_browser.get("/admin/dashboard")
    assert page.status_code == 200 and "No pools yet." in page.text and "No open alerts." in page.text
    assert api["alerts"]["unresolved"] == 0 and "Nothing to see to." in page.text


def test_every_page_has_the_dashboard_link_and_the_live_tools(admin_browser):
    page = admin_browser.get("/admin").text
    assert '<a href="/admin/dashboard"' in page
    assert re.search(r'<button[^>]*id="events-button"[^>]*>Events', page)
    assert re.search(r'<button[^>]*id="jobs-button"[^>]*>Jobs', page)
    assert 'role="dialog" aria-label="Events"' in page and 'role="dialog" aria-label="Jobs"' in page
    assert re.search(r'role="tab"[^>]*>Alerts', page) and re.search(r'role="tab"[^>]*>Events', page)
    assert "/live.js" in page
    assert admin_browser.get("/static/console/live.js").status_code == 200
