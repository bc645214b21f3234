"""Alerts on real Postgres: raised and cleared by events (a host that fails, a desktop that does not start, a
failed job) and by the periodic checks (storage, pools, directory sync); one unresolved alert per kind and object;
acknowledge and resolve through the API, with their permissions."""
from __future__ import annotations

import pytest
from sqlalchemy import select

from core.enums import Role, Severity
from event_manager.alerts import check_conditions, clear_alerts, raise_alert
from event_manager.service import emit
from manager import db
from manager.models import (Alert, Desktop, DirectorySyncState, Event, Job, Pool, RoleAssignment, StorageDomain,
                            Template, User)

API = "/api/v1"


def alerts() -> list[tuple[str, str, str]]:
    with db.session_scope() as session:
        return [(a.kind, a.object_id, a.state) for a in session.scalars(select(Alert).order_by(Alert.opened_at))]


def codes() -> list[str]:
    with db.session_scope() as session:
        return list(session.scalars(select(Event.code).order_by(Event.id)))


def test_a_failed_host_opens_one_alert_which_its_recovery_resolves(clean_db):
    with db.session_scope() as session:
        emit(session, "host.non_responsive", "h1 failed", host_id="h1")
    with db.session_scope() as session:
        emit(session, "host.fenced", "h1 is fenced", host_id="h1")  # the same condition: refreshed, not doubled
        emit(session, "host.non_responsive", "h2 failed", host_id="h2")
    assert alerts() == [("host.unavailable", "h1", "open"), ("host.unavailable", "h2", "open")]
    with db.session_scope() as session:
        row = session.scalar(select(Alert).where(Alert.object_id == "h1"))
        assert row.message == "h1 is fenced" and row.object_kind == "host"
        opened = session.scalars(select(Event).where(Event.code == "alert.opened")).all()
        assert [(e.host_id, e.severity) for e in opened] == [("h1", Severity.ALERT), ("h2", Severity.ALERT)]
    with db.session_scope() as session:
        emit(session, "host.recovered", "h1 is back", host_id="h1")
    assert alerts() == [("host.unavailable", "h1", "resolved"), ("host.unavailable", "h2", "open")]
    with db.session_scope() as session:
        row = session.scalar(select(Alert).where(Alert.object_id == "h1"))
        assert row.resolved_by == "system" and row.resolved_at is not None
    # It fails again: a new alert, the resolved one stays in the history.
    with db.session_scope() as session:
        emit(session, "host.fence_failed", "h1 cannot be fenced", host_id="h1")
    assert sorted(alerts()) == [("host.unavailable", "h1", "open"), ("host.unavailable", "h1", "resolved"),
                                ("host.unavailable", "h2", "open")]


def test_a_desktop_that_fails_to_start_and_a_failed_job_open_alerts(clean_db):
    with db.session_scope() as session:
        emit(session, "desktop.start_failed", "no memory on h1", desktop_id="d1", host_id="h1")
        emit(session, "desktop.ha_restart_failed", "nowhere to go", desktop_id="d2", host_id="h1")
        emit(session, "job.failed", "job image.import failed: bad file", job_id="j1")
        emit(session, "job.succeeded", "another job", job_id="j2")
    assert sorted(alerts()) == [("desktop.start_failed", "d1", "open"), ("desktop.start_failed", "d2", "open"),
                                ("job.failed", "j1", "open")]
    with db.session_scope() as session:
        emit(session, "desktop.started", "started on h2", desktop_id="d1", host_id="h2")
        emit(session, "desktop.ha_restarted", "restarted on h2", desktop_id="d2", host_id="h2")
    assert sorted(alerts()) == [("desktop.start_failed", "d1", "resolved"), ("desktop.start_failed", "d2", "resolved"),
                                ("job.failed", "j1", "open")]
    assert codes().count("alert.resolved") == 2


def test_a_failed_job_is_resolved_by_a_later_success_of_its_kind_on_its_target(clean_db):
    with db.session_scope() as session:
        jobs = {name: Job(kind=kind, target_kind="template", target_id=target) for name, kind, target in (
            ("failed", "image.import", "t1"), ("other_target", "image.import", "t2"),
            ("other_kind", "image.check", "t1"), ("retry", "image.import", "t1"))}
        session.add_all(jobs.values())
        session.flush()
        ids = {name: job.id for name, job in jobs.items()}
        emit(session, "job.failed", "import failed", job_id=ids["failed"])
    with db.session_scope() as session:
        emit(session, "job.succeeded", "t2 imported", job_id=ids["other_target"])
        emit(session, "job.succeeded", "t1 checked", job_id=ids["other_kind"])
    assert alerts() == [("job.failed", ids["failed"], "open")]
    with db.session_scope() as session:
        emit(session, "job.succeeded", "t1 imported", job_id=ids["retry"])
    assert alerts() == [("job.failed", ids["failed"], "resolved")]


def test_a_rolled_back_failure_opens_no_alert(clean_db):
    with pytest.raises(RuntimeError):
        with db.session_scope() as session:
            emit(session, "host.non_responsive", "h1 failed", host_id="h1")
            raise RuntimeError("the change it describes failed")
    assert alerts() == [] and codes() == []


def test_two_transactions_raising_the_same_alert_leave_one(clean_db):
    with db.session_scope() as first, db.session_scope() as second:
        assert raise_alert(first, "pool.nearly_full", "pool", "p1", "first") is True
        first.commit()
        assert raise_alert(second, "pool.nearly_full", "pool", "p1", "second") is False
    assert alerts() == [("pool.nearly_full", "p1", "open")]
    with db.session_scope() as session:
        assert clear_alerts(session, ["pool.nearly_full"], "p1") == 1
        assert clear_alerts(session, ["pool.nearly_full"], "p1") == 0


def _world(session, *, used_gib: int, in_use: int, sync_error: str) -> tuple[str, str]:
    domain = StorageDomain(name="nfs1", path="/srv/nfs1", total_bytes=100 << 30, used_bytes=used_gib << 30,
                           free_bytes=(100 - used_gib) << 30)
    template = Template(name="tpl-alerts")
    session.add_all([domain, template])
    session.flush()
    pool = Pool(name="office", template_id=template.id, size=10)
    session.add(pool)
    session.flush()
    users = [User(username=f"u{i}") for i in range(in_use)]
    session.add_all(users)
    session.flush()
    session.add_all([Desktop(name=f"office-{i}", pool_id=pool.id,
                             assigned_user_id=users[i].id if i < in_use else None) for i in range(10)])
    session.add(DirectorySyncState(directory="corp", last_error=sync_error))
    return domain.id, pool.id


def test_the_periodic_checks_raise_and_clear_storage_pool_and_directory_alerts(clean_db):
    with db.session_scope() as session:
        domain_id, pool_id = _world(session, used_gib=95, in_use=9, sync_error="LDAP server unreachable")
    with db.session_scope() as session:
        report = check_conditions(session, storage_percent=90, pool_percent=90)
    assert report == {"storage": {"opened": 1, "cleared": 0}, "pools": {"opened": 1, "cleared": 0},
                      "directories": {"opened": 1, "cleared": 0}}
    assert sorted(alerts()) == sorted([("storage.nearly_full", domain_id, "open"),
                                       ("pool.nearly_full", pool_id, "open"),
                                       ("directory.sync_failing", "corp", "open")])
    with db.session_scope() as session:  # checked again: nothing new
        assert check_conditions(session)["pools"] == {"opened": 0, "cleared": 0}
        # a higher threshold than the pool's 90 %: the pool alert goes away
        assert check_conditions(session, pool_percent=95)["pools"] == {"opened": 0, "cleared": 1}
    with db.session_scope() as session:
        session.get(StorageDomain, domain_id).used_bytes = 50 << 30
        session.scalar(select(DirectorySyncState)).last_error = ""
    with db.session_scope() as session:
        report = check_conditions(session)
    assert report["storage"] == {"opened": 0, "cleared": 1} and report["directories"] == {"opened": 0, "cleared": 1}
    assert report["pools"] == {"opened": 1, "cleared": 0}  # at 90 % again: a new alert
    assert sorted(alerts()) == sorted([("storage.nearly_full", domain_id, "resolved"),
                                       ("pool.nearly_full", pool_id, "resolved"), ("pool.nearly_full", pool_id, "open"),
                                       ("directory.sync_failing", "corp", "resolved")])


@pytest.fixture
def tokens(app) -> dict[Role, str]:
    from manager.auth import issue_token

    out = {}
    with db.session_scope() as session:
        for role in (Role.SUPER_USER, Role.DESKTOP_ADMIN, Role.HELP_DESK, Role.USER):
            user = User(username=f"alerts-{role.value.lower()}")
            session.add(user)
            session.flush()
            if role != Role.USER:
                session.add(RoleAssignment(user_id=user.id, role=role))
            out[role] = issue_token(session, user, name="alerts")
    return out


def test_alerts_are_listed_acknowledged_and_resolved_through_the_api(anon_client, tokens):
    def call(role, method, path, **kw):
        return anon_client.request(method, API + path, headers={"Authorization": f"Bearer {tokens[role]}"}, **kw)

    with db.session_scope() as session:
        emit(session, "host.non_responsive", "h1 failed", host_id="h1")
        emit(session, "job.failed", "job x failed", job_id="j1")
    listed = call(Role.HELP_DESK, "GET", "/alerts")
    assert listed.status_code == 200 and listed.json()["total"] == 2
    assert call(Role.USER, "GET", "/alerts").status_code == 403
    host_alert = next(a for a in listed.json()["items"] if a["kind"] == "host.unavailable")
    assert host_alert["state"] == "open" and host_alert["object_kind"] == "host"
    ack = f"/alerts/{host_alert['id']}/acknowledge"
    assert call(Role.HELP_DESK, "POST", ack).status_code == 403
    done = call(Role.DESKTOP_ADMIN, "POST", ack)
    assert done.status_code == 200 and done.json()["state"] == "acknowledged"
    assert done.json()["acknowledged_by"].startswith("alerts-desktopadmin")
    assert call(Role.SUPER_USER, "POST", ack).status_code == 409
    # acknowledged is still unresolved: the recovery resolves it
    with db.session_scope() as session:
        emit(session, "host.recovered", "back", host_id="h1")
    assert call(Role.SUPER_USER, "GET", "/alerts", params={"state": "resolved"}).json()["total"] == 1
    job_alert = call(Role.SUPER_USER, "GET", "/alerts", params={"kind": "job.failed"}).json()["items"][0]
    resolved = call(Role.SUPER_USER, "POST", f"/alerts/{job_alert['id']}/resolve")
    assert resolved.status_code == 200 and resolved.json()["state"] == "resolved"
    assert resolved.json()["resolved_by"].startswith("alerts-superuser")
    assert call(Role.SUPER_USER, "POST", f"/alerts/{job_alert['id']}/resolve").status_code == 409
    missing = call(Role.SUPER_USER, "POST", "/alerts/nope/resolve")
    assert missing.status_code == 404 and missing.json()["error"] == "not_found"
    assert call(Role.SUPER_USER, "GET", "/alerts", params={"state": "closed"}).status_code == 422
    assert call(Role.SUPER_USER, "GET", "/alerts", params={"state": "open"}).json()["total"] == 0
    assert "alert.acknowledged" in codes()
