"""Each pool kind's life cycle through the HTTP API, on real Postgres with desktops on node agents
(libvirt test driver): automatic (reset at logoff), manual (kept for good), time-based (lease expiry)."""
from __future__ import annotations

import datetime as dt
import time

from sqlalchemy import select

from tests.integration.broker.conftest import API, bearer, wait_for_jobs

RDP_CLIENT = {"protocols": ["rdp"], "address": "198.51.100.7"}


def connect(client, token, **body):
    body.setdefault("client", RDP_CLIENT)
    return client.post(f"{API}/broker/connect", json=body, headers=bearer(token))


def desktop_row(desktop_id):
    from manager import db
    from manager.models import Desktop

    with db.session_scope() as s:
        d = s.get(Desktop, desktop_id)
        return {"assigned": d.assigned_user_id, "task": d.task_state, "power": d.power_state,
                "lease_until": d.lease_until} if d else None


def events(code):
    from manager import db
    from manager.models import Event

    with db.session_scope() as s:
        return [(e.user_id, e.desktop_id, e.message, e.severity.value)
                for e in s.scalars(select(Event).where(Event.code == code).order_by(Event.id))]


def test_automatic_pool_desktop_goes_back_and_is_reset_at_logoff(world, anon_client):
    world.hosts(2)
    pool_id = world.pool(2, os_type="windows_11", protocols="spice,rdp", ip_prefix="10.9")
    alice, alice_token = world.user("alice")
    bob, bob_token = world.user("bob")
    world.entitle(pool_id=pool_id, user_id=alice)
    world.entitle(pool_id=pool_id, user_id=bob)

    first = connect(anon_client, alice_token, pool_id=pool_id)
    assert first.status_code == 200, first.text
    body = first.json()
    assert body["assignment"] == "new" and body["protocol"] == "rdp"
    assert body["file"]["name"].endswith(".rdp") and "full address:s:10.9." in body["file"]["content"]
    desktop_id = body["desktop_id"]
    row = desktop_row(desktop_id)
    assert row["assigned"] == alice and row["power"].value == "up"  # started through the node agent

    # a reconnect gives the same desktop and the same session
    again = connect(anon_client, alice_token, pool_id=pool_id).json()
    assert again["desktop_id"] == desktop_id and again["assignment"] == "existing"
    assert again["session_id"] == body["session_id"]

    off = anon_client.post(f"{API}/broker/logoff", json={"session_id": body["session_id"]},
                           headers=bearer(alice_token))
    assert off.status_code == 200 and off.json()["state"] == "ended"
    wait_for_jobs()
    row = desktop_row(desktop_id)
    assert row["assigned"] is None and row["task"] is None and row["power"].value == "down"
    assert len(events("desktop.reset")) == 1
    # bob now gets a desktop of the pool; the reset one is free again
    bobs = connect(anon_client, bob_token, pool_id=pool_id).json()
    assert desktop_row(bobs["desktop_id"])["assigned"] == bob
    assert [e[0] for e in events("broker.logoff")] == [alice]


def test_manual_pool_keeps_the_desktop_for_good_until_an_admin_unassigns(world, client, anon_client):
    world.hosts(1)
    pool_id = world.pool(2, pool_type="manual", os_type="windows_10", protocols="rdp", ip_prefix="10.8")
    carol, carol_token = world.user("carol")
    world.entitle(pool_id=pool_id, user_id=carol)

    first = connect(anon_client, carol_token, pool_id=pool_id).json()
    anon_client.post(f"{API}/broker/logoff", json={"session_id": first["session_id"]}, headers=bearer(carol_token))
    wait_for_jobs()
    assert desktop_row(first["desktop_id"])["assigned"] == carol  # logoff does not take it back
    second = connect(anon_client, carol_token, pool_id=pool_id).json()
    assert second["desktop_id"] == first["desktop_id"] and second["assignment"] == "existing"

    gone = client.post(f"{API}/pools/{pool_id}/desktops/{first['desktop_id']}/unassign")
    assert gone.status_code == 200, gone.text
    wait_for_jobs()
    row = desktop_row(first["desktop_id"])
    assert row["assigned"] is None and row["task"] is None
    assert events("broker.unassigned")[0][0] == carol
    # the admin can hand a desktop to her for good
    given = client.post(f"{API}/pools/{pool_id}/desktops/{first['desktop_id']}/assign", json={"user_id": carol})
    assert given.status_code == 200 and given.json()["assigned_user_id"] == carol
    again = client.post(f"{API}/pools/{pool_id}/desktops/{first['desktop_id']}/assign", json={"user_id": carol})
    assert again.status_code == 409


def test_time_based_lease_expires_and_the_desktop_is_reclaimed(world, client, anon_client):
    from manager import db
    from manager.models import Desktop

    world.hosts(1)
    pool_id = world.pool(1, pool_type="time_based", os_type="windows_11", protocols="rdp", ip_prefix="10.7",
                         lease_seconds=3600)
    dave, dave_token = world.user("dave")
    world.entitle(pool_id=pool_id, user_id=dave)
    got = connect(anon_client, dave_token, pool_id=pool_id).json()
    lease = dt.datetime.fromisoformat(got["lease_until"])
    assert dt.timedelta(minutes=59) < lease - dt.datetime.now(dt.timezone.utc) <= dt.timedelta(hours=1)

    with db.session_scope() as s:  # time passes: the lease ends
        s.get(Desktop, got["desktop_id"]).lease_until = dt.datetime.now(dt.timezone.utc) - dt.timedelta(seconds=1)
    job = client.post(f"{API}/pools/{pool_id}/maintain")
    assert job.status_code == 202
    wait_for_jobs()
    row = desktop_row(got["desktop_id"])
    assert row["assigned"] is None and row["task"] is None and row["lease_until"] is None
    expired = events("desktop.lease_expired")
    assert len(expired) == 1 and expired[0][0] == dave and expired[0][3] == "warning"
    # the user sees it in their own events; the admin in the event log
    mine = anon_client.get(f"{API}/me/events", headers=bearer(dave_token)).json()
    assert any(e["code"] == "desktop.lease_expired" for e in mine)
    assert client.get(f"{API}/events", params={"code": "desktop.lease_expired"}).json()["total"] == 1
    sessions = anon_client.get(f"{API}/me/sessions", headers=bearer(dave_token)).json()
    assert sessions == []  # the session ended with the lease


def test_time_based_window(world, anon_client):
    now = dt.datetime.now(dt.timezone.utc)
    world.hosts(1)
    later = world.pool(1, pool_type="time_based", os_type="windows_11", protocols="rdp", ip_prefix="10.6",
                       window_start=now + dt.timedelta(hours=1), window_end=now + dt.timedelta(hours=3))
    closing = world.pool(1, pool_type="time_based", os_type="windows_11", protocols="rdp", ip_prefix="10.5",
                         lease_seconds=7200, window_end=now + dt.timedelta(minutes=30))
    erin, token = world.user("erin")
    world.entitle(pool_id=later, user_id=erin)
    world.entitle(pool_id=closing, user_id=erin)
    refused = connect(anon_client, token, pool_id=later)
    assert refused.status_code == 409 and refused.json()["error"] == "pool_closed"
    assert "opens at" in refused.json()["detail"]
    got = connect(anon_client, token, pool_id=closing).json()
    assert abs(dt.datetime.fromisoformat(got["lease_until"]) - (now + dt.timedelta(minutes=30))) \
        < dt.timedelta(seconds=1)  # cut at the window's end, not now + 2 h


def test_full_pool_and_per_user_limit(world, anon_client):
    world.hosts(2)
    pool_id = world.pool(2, os_type="windows_11", protocols="rdp", ip_prefix="10.4", max_desktops_per_user=2,
                         name="eng")
    a, a_token = world.user("frank")
    b, b_token = world.user("grace")
    world.entitle(pool_id=pool_id, user_id=a)
    world.entitle(pool_id=pool_id, user_id=b)
    one = connect(anon_client, a_token, pool="eng").json()
    two = connect(anon_client, a_token, pool="eng", new_desktop=True).json()
    assert one["desktop_id"] != two["desktop_id"]
    third = connect(anon_client, a_token, pool="eng", new_desktop=True)
    assert third.status_code == 409 and third.json()["error"] == "too_many_desktops"
    full = connect(anon_client, b_token, pool="eng")
    assert full.status_code == 409
    assert full.json() == {"error": "pool_full", "detail": "pool eng is full: 2 of 2 desktops in use"}


def test_the_maintenance_loop_reclaims_expired_leases_by_itself(world, app, monkeypatch):
    from fastapi.testclient import TestClient

    from manager import db
    from manager.models import Desktop

    world.hosts(1)
    pool_id = world.pool(1, pool_type="time_based", os_type="windows_11", protocols="rdp", ip_prefix="10.3",
                         lease_seconds=600)
    user, token = world.user("quinn")
    world.entitle(pool_id=pool_id, user_id=user)
    monkeypatch.setenv("VDI_POOL_MAINTENANCE_SECONDS", "0.5")
    with TestClient(app) as running:  # the manager's lifespan starts the loop
        got = connect(running, token, pool_id=pool_id).json()
        with db.session_scope() as s:
            s.get(Desktop, got["desktop_id"]).lease_until = dt.datetime.now(dt.timezone.utc)
        deadline = time.monotonic() + 30
        while desktop_row(got["desktop_id"])["assigned"] is not None:
            assert time.monotonic() < deadline, "the loop did not reclaim the expired lease"
            time.sleep(0.2)
        wait_for_jobs()
    assert [e[0] for e in events("desktop.lease_expired")] == [user]
    assert desktop_row(got["desktop_id"])["task"] is None
