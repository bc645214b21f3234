"""Events on real Postgres: flood suppression per code and object, the retention purge, sign-in and permission
events (never a secret), each object's event list and its filters, and `Events:` searches by code and severity."""
from __future__ import annotations

import datetime as dt

import pytest
from sqlalchemy import func, select, update

from core.enums import Severity
from event_manager.service import emit, housekeeping, purge_events
from manager import db
from manager.models import Event, User, utcnow

API = "/api/v1"


def _events(code: str | None = None) -> list[Event]:
    with db.session_scope() as session:
        stmt = select(Event).order_by(Event.id)
        if code:
            stmt = stmt.where(Event.code == code)
        rows = session.scalars(stmt).all()
        session.expunge_all()
        return rows


def test_a_suppressed_code_is_recorded_once_per_object_within_its_window(clean_db):
    for _ in range(3):  # e.g. every heartbeat of a host reporting the same foreign desktop
        with db.session_scope() as session:
            emit(session, "host.foreign_desktop", "d1 runs elsewhere", desktop_id="d1", host_id="h1")
    with db.session_scope() as session:
        emit(session, "host.foreign_desktop", "d2 runs elsewhere", desktop_id="d2", host_id="h1")
        emit(session, "host.foreign_desktop", "d2 again, same transaction", desktop_id="d2", host_id="h1")
        emit(session, "host.up", "not suppressed", host_id="h1")
        emit(session, "host.up", "not suppressed", host_id="h1")
    assert [e.desktop_id for e in _events("host.foreign_desktop")] == ["d1", "d2"]
    assert len(_events("host.up")) == 2
    # Once the window (30 minutes) has passed, the object records it again.
    with db.session_scope() as session:
        session.execute(update(Event).values(time=utcnow() - dt.timedelta(minutes=31)))
    with db.session_scope() as session:
        emit(session, "host.foreign_desktop", "d1 still runs elsewhere", desktop_id="d1", host_id="h1")
    assert [e.desktop_id for e in _events("host.foreign_desktop")] == ["d1", "d2", "d1"]


def test_the_catalog_gives_the_default_severity(clean_db):
    with db.session_scope() as session:
        emit(session, "host.non_responsive", "h1 failed", host_id="h1")
        emit(session, "host.suspected", "h1 is connecting", host_id="h1", severity=Severity.ERROR)
    assert _events("host.non_responsive")[0].severity == Severity.ALERT
    assert _events("host.suspected")[0].severity == Severity.ERROR  # an emitter may say otherwise


def test_events_past_the_retention_are_purged_in_batches(clean_db):
    now = utcnow()
    with db.session_scope() as session:
        for days in (40, 35, 31, 29, 1):
            emit(session, "demo.seeded", f"{days} days old")
    with db.session_scope() as session:
        ids = session.scalars(select(Event.id).order_by(Event.id)).all()
        for event_id, days in zip(ids, (40, 35, 31, 29, 1)):
            session.execute(update(Event).where(Event.id == event_id).values(time=now - dt.timedelta(days=days)))
    with db.session_scope() as session:
        assert purge_events(session, 30, batch=2) == 2  # the two oldest
    report = housekeeping(retention_days=30, storage_percent=90, pool_percent=90, batch=2)
    assert report["purged"] == 1
    assert sorted(e.message for e in _events()) == ["1 days old", "29 days old"]


def test_logins_logouts_refusals_and_tokens_are_events_without_secrets(anon_client, admin_token):
    bad = anon_client.post(f"{API}/auth/login", json={"username": "admin", "password": "wrong-password-123"})
    assert bad.status_code == 401
    login = anon_client.post(f"{API}/auth/login", json={"username": "admin", "password": "admin-test-password"})
    assert login.status_code == 200, login.text
    token = login.json()["token"]
    made = anon_client.post(f"{API}/auth/tokens", json={"name": "backup-script"},
                            headers={"Authorization": f"Bearer {token}"})
    assert made.status_code == 201, made.text
    out = anon_client.post(f"{API}/auth/logout", headers={"Authorization": f"Bearer {token}"})
    assert out.status_code == 204
    events = {e.code: e for e in _events()}
    admin_id = login.json()["user_id"]
    assert events["user.login_failed"].user_id == login.json()["user_id"]
    assert events["user.login"].user_id == admin_id and "admin@" in events["user.login"].actor
    assert events["user.logout"].user_id == admin_id
    created = [e for e in _events("user.token_created") if "backup-script" in e.message]
    assert len(created) == 1 and created[0].user_id == admin_id
    for event in _events():
        for secret in (token, made.json()["token"], admin_token, "admin-test-password"):
            assert secret not in event.message


def test_role_assignments_are_permission_change_events_of_the_user(client):
    with db.session_scope() as session:
        user = User(username="perm-target")
        session.add(user)
        session.flush()
        user_id = user.id
    made = client.post(f"{API}/role-assignments", json={"user_id": user_id, "role": "HelpDesk"})
    assert made.status_code == 201, made.text
    assert client.delete(f"{API}/role-assignments/{made.json()['id']}").status_code == 204
    changes = client.get(f"{API}/users/{user_id}/events", params={"code": "role_assignment.*"}).json()["items"]
    assert [e["code"] for e in changes] == ["role_assignment.deleted", "role_assignment.created"]
    assert "HelpDesk" in changes[1]["message"]


@pytest.fixture
def host_and_desktop(clean_db):
    from tests.integration.events.conftest import make_desktop

    return make_desktop("ev-desk")


def test_each_objects_events_are_listed_with_filters(client, host_and_desktop):
    host_id, desktop_id = host_and_desktop
    with db.session_scope() as session:
        emit(session, "desktop.start_failed", "start failed: no memory", desktop_id=desktop_id, host_id=host_id)
        emit(session, "desktop.started", "started", desktop_id=desktop_id, host_id=host_id)
        emit(session, "host.up", "up", host_id=host_id)
    mine = client.get(f"{API}/desktops/{desktop_id}/events").json()
    codes = [e["code"] for e in mine["items"]]
    # newest first; the alert the failure opened and the start that resolved it are the desktop's too
    assert codes == ["alert.resolved", "desktop.started", "alert.opened", "desktop.start_failed"]
    errors = client.get(f"{API}/desktops/{desktop_id}/events", params={"severity": "error"}).json()["items"]
    assert [e["code"] for e in errors] == ["desktop.start_failed"]
    prefixed = client.get(f"{API}/desktops/{desktop_id}/events", params={"code": "desktop.*"}).json()["items"]
    assert [e["code"] for e in prefixed] == ["desktop.started", "desktop.start_failed"]
    on_host = client.get(f"{API}/hosts/{host_id}/events", params={"code": "host.up"}).json()["items"]
    assert [e["code"] for e in on_host] == ["host.up"]
    future = client.get(f"{API}/hosts/{host_id}/events", params={"since": "2999-01-01T00:00:00Z"}).json()
    assert future["items"] == []
    missing = client.get(f"{API}/desktops/00000000-0000-0000-0000-000000000000/events")
    assert missing.status_code == 404 and missing.json()["error"] == "not_found"
    assert client.get(f"{API}/desktops/{desktop_id}/events", params={"severity": "loud"}).status_code == 422


def test_events_are_searched_by_code_and_severity(client, host_and_desktop):
    host_id, desktop_id = host_and_desktop
    with db.session_scope() as session:
        emit(session, "desktop.start_failed", "start failed", desktop_id=desktop_id, host_id=host_id)
        emit(session, "host.up", "up", host_id=host_id)
    found = client.get(f"{API}/search", params={"q": "Events: code = desktop.start_failed"})
    assert found.status_code == 200, found.text
    assert [e["code"] for e in found.json()["items"]] == ["desktop.start_failed"]
    severe = client.get(f"{API}/search", params={"q": "Events: severity >= alert"}).json()["items"]
    assert {e["code"] for e in severe} == {"alert.opened"}
    typed = client.get(f"{API}/search/complete", params={"q": "Events: code = host.fe"})
    assert typed.status_code == 200, typed.text
    assert "host.fenced" in str(typed.json()) and "host.fence_failed" in str(typed.json())


def test_the_managers_housekeeping_loop_purges_old_events_and_checks_alerts(settings_env, pg_engine, clean_db):
    """The loop the manager's lifespan starts on the leader (manager/app.py), run fast."""
    import time

    from fastapi.testclient import TestClient

    from manager.app import create_app
    from manager.models import StorageDomain
    from manager.models import Alert

    with db.session_scope() as session:
        emit(session, "demo.seeded", "old")
        session.add(StorageDomain(name="full", path="/srv/full", total_bytes=100, used_bytes=99, free_bytes=1))
    with db.session_scope() as session:
        session.execute(update(Event).values(time=utcnow() - dt.timedelta(days=3)))
    settings = settings_env.model_copy(update={"event_housekeeping_seconds": 0.2, "event_retention_days": 2})
    with TestClient(create_app(settings, configure_db=False)):
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            with db.session_scope() as session:
                old = session.scalar(select(func.count()).where(Event.message == "old"))
                full = session.scalar(select(func.count()).select_from(Alert)
                                      .where(Alert.kind == "storage.nearly_full"))
            if old == 0 and full == 1:
                break
            time.sleep(0.2)
    assert (old, full) == (0, 1)


def test_a_busy_host_records_high_cpu_once_per_half_hour(host_and_desktop):
    from manager.heartbeat import HIGH_CPU_PERCENT, ingest_heartbeat
    from manager.models import Host

    host_id, _ = host_and_desktop

    def beat(cpu: int) -> None:
        with db.session_scope() as session:
            ingest_heartbeat(session, session.get(Host, host_id), {"seq": 1, "cpu_usage": cpu})

    beat(HIGH_CPU_PERCENT - 1)
    assert _events("host.high_cpu") == []
    for _ in range(3):  # every heartbeat of a busy host: one event
        beat(99)
    assert [e.host_id for e in _events("host.high_cpu")] == [host_id]
    with db.session_scope() as session:
        session.execute(update(Event).where(Event.code == "host.high_cpu")
                        .values(time=utcnow() - dt.timedelta(minutes=31)))
    beat(99)
    assert len(_events("host.high_cpu")) == 2
