"""Role assignments and entitlements exist once (issue 22, item 2), and an enabled SuperUser always remains (item 3):
identical creates at the same moment, a repeat, the migration that removes old duplicates, every API path that could
remove the last SuperUser, and two SuperUsers removing each other at once."""
from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
from sqlalchemy import func, select, text
from sqlalchemy.orm import Session

from core.enums import Role
from manager import db
from manager.auth import issue_token
from manager.db import make_engine
from manager.identity.superusers import count_superusers
from manager.migrate import downgrade, upgrade
from manager.models import Desktop, Entitlement, Group, RoleAssignment, User, UserGroupMembership
from tests.harness.postgres import fresh_database

API = "/api/v1"


def _at_once(client, n: int, method: str, path: str, bodies=None, tokens=None) -> list:
    """n requests released together by a barrier, each from its own thread."""
    barrier = threading.Barrier(n)

    def one(i: int):
        headers = {"Authorization": f"Bearer {tokens[i]}"} if tokens else None
        barrier.wait()
        return client.request(method, path[i] if isinstance(path, list) else path,
                              json=bodies[i] if bodies else None, headers=headers)

    with ThreadPoolExecutor(n) as pool:
        return list(pool.map(one, range(n)))


@pytest.fixture
def principals(client):
    with db.session_scope() as session:
        user, group, desktop = User(username="pat", domain="local"), Group(name="ops"), Desktop(name="desk-1")
        session.add_all([user, group, desktop])
        session.flush()
        return {"user_id": user.id, "group_id": group.id, "desktop_id": desktop.id}


@pytest.mark.parametrize("path,body", [
    ("role-assignments", lambda p: {"user_id": p["user_id"], "role": "HelpDesk"}),
    ("role-assignments", lambda p: {"group_id": p["group_id"], "role": "DesktopAdmin"}),
    ("entitlements", lambda p: {"user_id": p["user_id"], "desktop_id": p["desktop_id"]}),
    ("entitlements", lambda p: {"group_id": p["group_id"], "desktop_id": p["desktop_id"]}),
])
def test_identical_creates_at_once_make_one_row_and_409s(client, principals, path, body):
    n = 30
    replies = _at_once(client, n, "POST", f"{API}/{path}", [body(principals)] * n)
    codes = sorted(r.status_code for r in replies)
    assert codes == [201] + [409] * (n - 1), [r.text for r in replies if r.status_code not in (201, 409)]
    assert all(r.json()["error"] == "conflict" for r in replies if r.status_code == 409)
    listed = client.get(f"{API}/{path}", params={"per_page": 100}).json()["items"]
    assert len([row for row in listed if all(row[k] == v for k, v in body(principals).items())]) == 1
    # and a later repeat says what is wrong
    again = client.post(f"{API}/{path}", json=body(principals))
    assert again.status_code == 409 and "already" in again.json()["detail"]


def test_deleting_the_one_assignment_revokes_the_role(client, principals, anon_client):
    with db.session_scope() as session:
        token = issue_token(session, session.get(User, principals["user_id"]), name="t")
    created = [client.post(f"{API}/role-assignments", json={"user_id": principals["user_id"], "role": "HelpDesk"})
               for _ in range(3)]
    assert [c.status_code for c in created] == [201, 409, 409]
    me = {"Authorization": f"Bearer {token}"}
    assert "HelpDesk" in anon_client.get(f"{API}/auth/me", headers=me).json()["roles"]
    assert client.delete(f"{API}/role-assignments/{created[0].json()['id']}").status_code == 204
    assert "HelpDesk" not in anon_client.get(f"{API}/auth/me", headers=me).json()["roles"]


def test_the_migration_removes_duplicates_keeping_one():
    with fresh_database("vdi_mig_dups") as url:
        upgrade(url)
        engine = make_engine(url)
        try:
            with Session(engine) as session, session.begin():
                user, group, desktop = User(username="u", domain="local"), Group(name="g"), Desktop(name="d")
                session.add_all([user, group, desktop])
                session.flush()
                session.add_all([RoleAssignment(user_id=user.id, role=Role.HELP_DESK),
                                 RoleAssignment(group_id=group.id, role=Role.SUPER_USER, source="directory"),
                                 Entitlement(user_id=user.id, desktop_id=desktop.id),
                                 Entitlement(group_id=group.id, desktop_id=desktop.id)])
            downgrade(url, "0010_portal_preferences")
            with engine.begin() as conn:  # what the old constraint let through: the same rows again
                for table, columns in (("role_assignments", "user_id, group_id, role"),
                                       ("entitlements", "user_id, group_id, pool_id, desktop_id")):
                    for copy, source in (("m", "manual"), ("d", "directory")):
                        conn.execute(text(f"INSERT INTO {table} (id, created_at, source, {columns}) "
                                          f"SELECT substr(id, 1, 34) || '-{copy}', created_at, '{source}', {columns} "
                                          f"FROM {table} WHERE id NOT LIKE '%-_'"))
                assert conn.scalar(text("SELECT count(*) FROM role_assignments")) == 6
            upgrade(url)
            with Session(engine) as session:
                roles = list(session.scalars(select(RoleAssignment)))
                ents = list(session.scalars(select(Entitlement)))
                assert len(roles) == 2 and len(ents) == 2
                # the group's directory-made role was duplicated by a manual copy: the manual one is kept
                assert {r.source for r in roles} == {"manual"}
        finally:
            engine.dispose()


# ---- the last SuperUser ----------------------------------------------------------------------------------------
def _superuser(session, name: str) -> tuple[User, str, str]:
    user = User(username=name, domain="local")
    session.add(user)
    session.flush()
    assignment = RoleAssignment(user_id=user.id, role=Role.SUPER_USER)
    session.add(assignment)
    session.flush()
    return user, assignment.id, issue_token(session, user, name="t")


def _admin_assignment(client) -> str:
    me = client.get(f"{API}/auth/me").json()["user_id"]
    rows = client.get(f"{API}/role-assignments", params={"per_page": 100}).json()["items"]
    return next(r["id"] for r in rows if r["user_id"] == me and r["role"] == "SuperUser"), me


def test_the_last_superuser_cannot_be_removed_by_any_path(client):
    assignment, admin_id = _admin_assignment(client)
    for method, path, body in [("DELETE", f"role-assignments/{assignment}", None),
                               ("DELETE", f"users/{admin_id}", None),
                               ("PATCH", f"users/{admin_id}", {"enabled": False})]:
        refused = client.request(method, f"{API}/{path}", json=body)
        assert refused.status_code == 409, (path, refused.text)
        assert "no enabled SuperUser" in refused.json()["detail"]
    assert client.get(f"{API}/auth/me").json()["roles"].count("SuperUser") == 1

    # a SuperUser through a (nested) group counts; deleting that group is then the last removal
    with db.session_scope() as session:
        outer, inner, other = Group(name="vdi-admins"), Group(name="team"), User(username="grace", domain="local")
        session.add_all([outer, inner, other])
        session.flush()
        session.add_all([RoleAssignment(group_id=outer.id, role=Role.SUPER_USER),
                         UserGroupMembership(user_id=other.id, group_id=inner.id)])
        session.execute(text("INSERT INTO group_group_memberships (parent_id, child_id) VALUES (:p, :c)"),
                        {"p": outer.id, "c": inner.id})
        outer_id = outer.id
    assert client.delete(f"{API}/role-assignments/{assignment}").status_code == 204  # grace remains
    with db.session_scope() as session:
        assert count_superusers(session) == 1
    with db.session_scope() as session:
        admin_token = issue_token(session, session.scalar(select(User).where(User.username == "grace")), name="t")
    grace = {"Authorization": f"Bearer {admin_token}"}
    refused = client.delete(f"{API}/groups/{outer_id}", headers=grace)
    assert refused.status_code == 409, refused.text
    with db.session_scope() as session:
        assert count_superusers(session) == 1


def test_two_superusers_removing_each_other_at_once_leave_one(client):
    for _ in range(4):
        with db.session_scope() as session:
            a, a_assignment, a_token = _superuser(session, "ann")
            b, b_assignment, b_token = _superuser(session, "ben")
        assignment, _admin = _admin_assignment(client)
        assert client.delete(f"{API}/role-assignments/{assignment}").status_code == 204
        replies = _at_once(client, 2, "DELETE", [f"{API}/role-assignments/{b_assignment}",
                                                 f"{API}/role-assignments/{a_assignment}"], tokens=[a_token, b_token])
        assert sorted(r.status_code for r in replies) == [204, 409], [r.text for r in replies]
        with db.session_scope() as session:
            assert count_superusers(session) == 1
            # put things back for the next round: admin SuperUser again, ann and ben gone
            admin = session.scalar(select(User).where(User.username == "admin"))
            session.add(RoleAssignment(user_id=admin.id, role=Role.SUPER_USER))
            session.flush()
            for user in session.scalars(select(User).where(User.username.in_(["ann", "ben"]))):
                session.delete(user)


def test_a_sync_that_removes_the_last_superuser_raises_an_alert_and_restore_admin_recovers(clean_db, ad,
                                                                                           ad_settings, pg_url,
                                                                                           tmp_path):
    """The directory is the authority on its groups: a sync that takes the role from the last SuperUser is
    applied, with an alert; `vdi restore-admin` on the manager host gives admin@local the role back."""
    import os
    import subprocess
    import sys

    from manager.identity.directory import Directory
    from manager.identity.sync import sync_directory
    from manager.models import Event

    with db.session_scope() as session:
        sync_directory(session, Directory(ad_settings), full=True)  # vdi-admins -> SuperUser
        assert count_superusers(session) > 0
    with db.session_scope() as session:
        sync_directory(session, Directory(ad_settings.model_copy(update={"role_map": {}})), full=True)
        assert count_superusers(session) == 0
    with db.session_scope() as session:
        alerts = list(session.scalars(select(Event.message).where(Event.code == "identity.no_superuser")))
        assert len(alerts) == 1 and "vdi restore-admin" in alerts[0]

    env = {**os.environ, "VDI_DATABASE_URL": pg_url, "VDI_DATA_DIR": str(tmp_path)}
    env.pop("VDI_ADMIN_PASSWORD", None)
    done = subprocess.run([sys.executable, "-m", "manager.cli", "restore-admin"], env=env, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    password_file = tmp_path / "admin-password"
    assert password_file.stat().st_mode & 0o077 == 0
    with db.session_scope() as session:
        assert count_superusers(session) == 1
        admin = session.scalar(select(User).where(User.username == "admin", User.domain == "local"))
        from manager.auth import verify_password
        assert admin.enabled and verify_password(password_file.read_text().strip(), admin.password_hash)
