"""Console sessions follow what the hosts observe (issue 21 item 5), on real Postgres with desktops on node agents
(libvirt test driver), through the HTTP API: a connect opens a pending session; a host's console events
(POST /nodes/{name}/console-events, with that host's token) make it connected and disconnected; a host cannot speak
for another host's desktops; an unused ticket's session counts as disconnected from its expiry; each pool's
disconnect policy (log off or reset after N minutes) acts on disconnected sessions only after its delay.
The same on a real guest with a real VNC client: test_real_guests.py."""
from __future__ import annotations

import datetime as dt

from sqlalchemy import select

from tests.integration.broker.conftest import API, bearer

RDP = {"protocols": ["rdp"], "address": "198.51.100.9"}
TICKET = dt.timedelta(seconds=120)


def connect(client, token, pool_id):
    """A connect over RDP (the test driver cannot set SPICE tickets), which the host cannot observe: connected at
    once; then the user's SPICE connect as the broker records it after issuing a ticket (broker.service.connect):
    the same session, now pending."""
    r = client.post(f"{API}/broker/connect", json={"pool_id": pool_id, "client": RDP}, headers=bearer(token))
    assert r.status_code == 200, r.text
    got = r.json()
    assert session_row(got["session_id"])["state"] == "connected"
    got["expires_at"] = spice_connect(got["session_id"])
    return got


def spice_connect(session_id):
    """The user connects (again) over SPICE: the broker records it on their live session after a new ticket."""
    from broker import sessions
    from manager import db
    from manager.models import DesktopSession, utcnow

    with db.session_scope() as s:
        row = s.get(DesktopSession, session_id)
        expires = utcnow() + TICKET
        assert sessions.open_session(s, user_id=row.user_id, desktop_id=row.desktop_id, pool_id=row.pool_id,
                                     protocol="spice", client_address="198.51.100.9",
                                     ticket_expires_at=expires) == session_id
    return expires


def session_row(session_id):
    from manager import db
    from manager.models import DesktopSession

    with db.session_scope() as s:
        row = s.get(DesktopSession, session_id)
        return {"state": row.state.value, "connected_at": row.connected_at, "disconnected_at": row.disconnected_at,
                "ended_at": row.ended_at}


def host_of(desktop_id):
    from manager import db
    from manager.models import Desktop, Host

    with db.session_scope() as s:
        host = s.get(Host, s.get(Desktop, desktop_id).host_id)
        return host.name


def report(client, world, host_name, *events):
    token = next(a.node.token for a in world.agents if host_name.endswith(a.node.name))
    return client.post(f"{API}/nodes/{host_name}/console-events", json={"events": list(events)},
                       headers=bearer(token))


def event(desktop_id, attached, at, **extra):
    return {"desktop_id": desktop_id, "attached": attached, "at": at.isoformat(), "protocol": "spice",
            "client": "198.51.100.9", **extra}


def test_a_session_is_connected_only_while_a_client_is_attached(world, anon_client):
    from manager.models import utcnow

    world.hosts(2)
    pool_id = world.pool(2, pool_type="manual", os_type="windows_11", protocols="spice,rdp", ip_prefix="10.21")
    ann, token = world.user("ann")
    world.entitle(pool_id=pool_id, user_id=ann)
    got = connect(anon_client, token, pool_id)
    sid, desktop_id = got["session_id"], got["desktop_id"]
    assert session_row(sid)["state"] == "pending" and session_row(sid)["connected_at"] is None
    mine = anon_client.get(f"{API}/me/desktops", headers=bearer(token)).json()
    assert [(d["session_state"], d["in_use"]) for d in mine] == [("pending", False)]

    host = host_of(desktop_id)
    other = next(f"{world.prefix}-{a.node.name}" for a in world.agents[:2] if not host.endswith(a.node.name))
    t0 = utcnow()
    # another host cannot make the session connected; a wrong token is refused outright
    r = report(anon_client, world, other, event(desktop_id, True, t0))
    assert r.status_code == 200 and r.json()["ignored"] == 1 and r.json()["changed"] == 0
    assert session_row(sid)["state"] == "pending"
    wrong = anon_client.post(f"{API}/nodes/{host}/console-events", json={"events": []},
                             headers=bearer("not-the-token"))
    assert wrong.status_code == 401
    bad = report(anon_client, world, host, {"desktop_id": desktop_id, "attached": True, "at": "2026-12-06T10:00:00"})
    assert bad.status_code == 422 and "time zone" in bad.json()["detail"]

    r = report(anon_client, world, host, event(desktop_id, True, t0))
    assert r.json()["changed"] == 1
    row = session_row(sid)
    assert row["state"] == "connected" and row["connected_at"] == t0
    mine = anon_client.get(f"{API}/me/desktops", headers=bearer(token)).json()
    assert [(d["session_state"], d["in_use"]) for d in mine] == [("connected", True)]

    # a reconnect while the client is still attached keeps the session connected, since when it was
    spice_connect(sid)
    assert session_row(sid)["state"] == "connected"
    assert session_row(sid)["connected_at"] == t0

    t1 = t0 + dt.timedelta(seconds=30)
    assert report(anon_client, world, host, event(desktop_id, False, t1)).json()["changed"] == 1
    row = session_row(sid)
    assert row["state"] == "disconnected" and row["disconnected_at"] == t1
    # a second "left" changes nothing; the client coming back makes it connected again
    assert report(anon_client, world, host, event(desktop_id, False, t1)).json() == {"ok": True, "changed": 0,
                                                                                    "ignored": 1}
    assert report(anon_client, world, host, event(desktop_id, True, t1)).json()["changed"] == 1
    assert session_row(sid)["state"] == "connected"

    from manager import db
    from manager.models import Event

    with db.session_scope() as s:
        codes = [e.code for e in s.scalars(select(Event).where(Event.desktop_id == desktop_id,
                                                               Event.code.like("session.%")).order_by(Event.id))]
    assert codes == ["session.connected", "session.disconnected", "session.connected"]


def test_an_unused_ticket_counts_as_disconnected_from_its_expiry(world, anon_client):
    from broker import sessions
    from manager import db

    world.hosts(1)
    pool_id = world.pool(1, os_type="windows_11", protocols="spice,rdp", ip_prefix="10.22")
    bo, token = world.user("bo")
    world.entitle(pool_id=pool_id, user_id=bo)
    got = connect(anon_client, token, pool_id)
    expires = got["expires_at"]
    with db.session_scope() as s:
        assert sessions.expire_pending(s, now=expires - dt.timedelta(seconds=1)) == 0
    assert session_row(got["session_id"])["state"] == "pending"
    with db.session_scope() as s:
        assert sessions.expire_pending(s, now=expires + dt.timedelta(seconds=1)) == 1
    row = session_row(got["session_id"])
    assert row["state"] == "disconnected" and row["disconnected_at"] == expires


def test_pool_disconnect_policy_acts_after_its_delay(world, anon_client, client):
    from broker import lifecycle
    from manager import db
    from manager.models import Desktop, Job, utcnow

    world.hosts(1)
    # through the API: the policy is part of a pool's settings
    auto = world.pool(1, os_type="windows_11", protocols="spice,rdp", ip_prefix="10.23")
    manual = world.pool(1, pool_type="manual", os_type="windows_11", protocols="spice,rdp", ip_prefix="10.24")
    for pool_id, action in ((auto, "logoff"), (manual, "reset")):
        r = client.patch(f"{API}/pools/{pool_id}", json={"disconnect_action": action, "disconnect_after_minutes": 10})
        assert r.status_code == 200 and r.json()["disconnect_action"] == action, r.text
        assert r.json()["disconnect_after_minutes"] == 10
    bad = client.patch(f"{API}/pools/{auto}", json={"disconnect_action": "shutdown"})
    assert bad.status_code == 422
    bad = client.patch(f"{API}/pools/{auto}", json={"disconnect_after_minutes": -1})
    assert bad.status_code == 422

    cy, token = world.user("cy")
    world.entitle(pool_id=auto, user_id=cy)
    world.entitle(pool_id=manual, user_id=cy)
    a, m = connect(anon_client, token, auto), connect(anon_client, token, manual)
    left = utcnow()
    for got in (a, m):
        host = host_of(got["desktop_id"])
        assert report(anon_client, world, host, event(got["desktop_id"], True, left - dt.timedelta(minutes=1)),
                      event(got["desktop_id"], False, left)).json()["changed"] == 2

    with db.session_scope() as s:  # 9 minutes away: not yet
        assert lifecycle.act_on_disconnected(s, now=left + dt.timedelta(minutes=9)) == []
    assert session_row(a["session_id"])["state"] == session_row(m["session_id"])["state"] == "disconnected"

    with db.session_scope() as s:  # 10 minutes: both act
        to_reset = lifecycle.act_on_disconnected(s, now=left + dt.timedelta(minutes=10))
    assert sorted(to_reset) == sorted([a["desktop_id"], m["desktop_id"]])
    for got in (a, m):
        assert session_row(got["session_id"])["state"] == "ended"
        with db.session_scope() as s:
            d = s.get(Desktop, got["desktop_id"])
            assert d.assigned_user_id is None and d.task_state.value == "reimaging"
    with db.session_scope() as s:  # nothing left to do: a second pass (another manager process) acts on none
        assert lifecycle.act_on_disconnected(s, now=left + dt.timedelta(minutes=11)) == []
        assert s.scalar(select(Job.id).where(Job.kind == "desktops.reset")) is None  # the caller enqueues


def test_pool_maintenance_applies_the_policy_and_resets(world, anon_client, client):
    """The maintenance pass (POST /pools/{id}/maintain, as the loop runs it) enqueues the reset; a pool without a
    policy leaves its disconnected desktop alone."""
    from tests.integration.broker.conftest import wait_for_jobs
    from manager import db
    from manager.models import Desktop, utcnow

    world.hosts(1)
    at_once = world.pool(1, os_type="windows_11", protocols="spice,rdp", ip_prefix="10.25", disconnect_action="reset",
                         disconnect_after_minutes=0)
    keep = world.pool(1, os_type="windows_11", protocols="spice,rdp", ip_prefix="10.26")
    dee, token = world.user("dee")
    world.entitle(pool_id=at_once, user_id=dee)
    world.entitle(pool_id=keep, user_id=dee)
    gone, kept = connect(anon_client, token, at_once), connect(anon_client, token, keep)
    now = utcnow()
    for got in (gone, kept):
        host = host_of(got["desktop_id"])
        report(anon_client, world, host, event(got["desktop_id"], True, now), event(got["desktop_id"], False, now))
    assert client.post(f"{API}/pools/{at_once}/maintain").status_code == 202
    wait_for_jobs(60)
    assert session_row(gone["session_id"])["state"] == "ended"
    assert session_row(kept["session_id"])["state"] == "disconnected"
    with db.session_scope() as s:
        d = s.get(Desktop, gone["desktop_id"])
        assert d.assigned_user_id is None and d.task_state is None  # reset done, free again
        assert s.get(Desktop, kept["desktop_id"]).assigned_user_id == dee


def test_the_portal_says_whether_the_viewer_is_attached(world, anon_client):
    from tests.integration.web.conftest import form_login
    from tests.integration.web.test_portal_pages import PASSWORD, user_with_password

    world.hosts(1)
    pool_id = world.pool(1, os_type="windows_11", protocols="spice,rdp", ip_prefix="10.27")
    eve = user_with_password("eve")
    world.entitle(pool_id=pool_id, user_id=eve)
    assert form_login(anon_client, "eve@local", PASSWORD, "/portal").status_code == 303
    from manager import db
    from manager.auth import issue_token
    from manager.models import User, utcnow

    with db.session_scope() as s:
        token = issue_token(s, s.get(User, eve), name="tests")
    got = connect(anon_client, token, pool_id)
    flags = ("Waiting for your viewer", "In use", "Disconnected")
    page = anon_client.get("/portal").text
    assert [f for f in flags if f in page] == ["Waiting for your viewer"]
    host, now = host_of(got["desktop_id"]), utcnow()
    report(anon_client, world, host, event(got["desktop_id"], True, now))
    page = anon_client.get("/portal").text
    assert [f for f in flags if f in page] == ["In use"]
    report(anon_client, world, host, event(got["desktop_id"], False, now))
    page = anon_client.get("/portal").text
    assert [f for f in flags if f in page] == ["Disconnected"]
