"""Directory sync against the real Samba AD DC: full sync of the seeded 200 users with nested groups (three
levels and the loop-a/loop-b cycle), incremental sync by uSNChanged (changes, renames, deletions), removal by
GUID comparison on a full sync, the group -> role/entitlement mapping, dry runs (API and CLI)."""
from __future__ import annotations

import json
import os
import subprocess
import sys

from ldap3 import MODIFY_ADD, MODIFY_REPLACE
from sqlalchemy import func, select

from core.enums import PrincipalSource, Role
from manager import db
from manager.auth import issue_token
from manager.identity.directory import Directory
from manager.identity.membership import group_ids_for_user, member_user_ids_of_group
from manager.identity.sync import sync_directory
from manager.models import (ApiToken, DirectorySyncState, Entitlement, Event, Group, GroupGroupMembership, Pool,
                            RoleAssignment, Template, User, UserGroupMembership)
from tests.integration.identity.conftest import REALM, SEEDED_USERS, group_dn, user_dn

SEEDED = [f"user{i:03d}" for i in range(1, SEEDED_USERS + 1)]


def run_sync(settings, **kwargs) -> dict:
    with db.session_scope() as session:
        return sync_directory(session, Directory(settings), **kwargs).summary(limit=1000)


def user(session, name: str) -> User:
    row = session.scalar(select(User).where(User.username == name, User.source == PrincipalSource.AD))
    assert row is not None, f"{name} was not synced"
    return row


def group(session, name: str) -> Group:
    row = session.scalar(select(Group).where(Group.name == name, Group.source == PrincipalSource.AD))
    assert row is not None, f"group {name} was not synced"
    return row


def ids(session, names) -> set[str]:
    return {user(session, n).id for n in names}


def test_full_sync_imports_the_seeded_directory(clean_db, ad, ad_settings):
    summary = run_sync(ad_settings, full=True)
    assert summary["mode"] == "full" and not summary["dry_run"]
    assert set(SEEDED) | {"svc-vdi"} <= set(summary["users"]["added"]["names"])

    with db.session_scope() as session:
        synced = set(session.scalars(select(User.username).where(User.source == PrincipalSource.AD)))
        assert set(SEEDED) <= synced
        disabled = {u.username for u in session.scalars(select(User).where(User.username.in_(SEEDED),
                                                                              User.enabled.is_(False)))}
        assert disabled == {f"user{i:03d}" for i in range(10, SEEDED_USERS + 1, 10)}

        u11 = user(session, "user011")
        assert (u11.upn, u11.domain, u11.department, u11.email) == (
            f"user011@{REALM}", "CORP", "Engineering", "user011@example.com")
        assert u11.dn.startswith("CN=user011,OU=Engineering") and len(u11.object_guid) == 36
        u3 = user(session, "user003")
        assert (u3.first_name, u3.last_name) == ("Zoë", "Müller")  # non-ASCII survives the round trip

        # three levels: user011 -> eng-backend -> eng-all -> vdi-users (-> all-staff-dl)
        names = dict(session.execute(select(Group.id, Group.name)).all())
        assert {names[g] for g in group_ids_for_user(session, u11.id)} == {
            "eng-backend", "eng-all", "vdi-users", "all-staff-dl"}
        assert member_user_ids_of_group(session, group(session, "vdi-users").id) == ids(session, SEEDED)
        assert member_user_ids_of_group(session, group(session, "eng-all").id) == ids(session, SEEDED[:100])
        # only DIRECT memberships are stored: user011 is a row of eng-backend only
        direct = set(session.scalars(select(UserGroupMembership.group_id)
                                     .where(UserGroupMembership.user_id == u11.id)))
        assert direct == {group(session, "eng-backend").id}

        # the cycle: loop-a <-> loop-b, user001 in loop-a; both directions stored, the closure terminates
        loop_a, loop_b = group(session, "loop-a"), group(session, "loop-b")
        edges = set(session.execute(select(GroupGroupMembership.parent_id, GroupGroupMembership.child_id)).all())
        assert {(loop_a.id, loop_b.id), (loop_b.id, loop_a.id)} <= edges
        assert member_user_ids_of_group(session, loop_b.id) == ids(session, ["user001"])
        assert {loop_a.id, loop_b.id} <= group_ids_for_user(session, user(session, "user001").id)

        # the mapping: vdi-admins -> SuperUser, eng-all -> HelpDesk (user011 gets it three levels down)
        mapped = {(names[r.group_id], r.role) for r in session.scalars(
            select(RoleAssignment).where(RoleAssignment.source == "directory"))}
        assert mapped == {("vdi-admins", Role.SUPER_USER), ("eng-all", Role.HELP_DESK)}
        from manager.auth import roles_of

        assert Role.SUPER_USER in roles_of(session, user(session, "user002").id)
        assert roles_of(session, u11.id) == {Role.HELP_DESK, Role.USER}
        assert roles_of(session, user(session, "user150").id) == {Role.USER}

        state = session.scalar(select(DirectorySyncState))
        assert state.highest_usn > 0 and state.invocation_id and state.last_full_sync_at is not None
    # the pool and desktop named in the entitlement map do not exist yet: reported, not fatal
    assert set(summary["permissions"]["unknown_targets"]) == {"pool:office", "desktop:sales-kiosk"}


def test_second_sync_is_incremental_and_changes_nothing(clean_db, ad, ad_settings):
    run_sync(ad_settings, full=True)
    with db.session_scope() as session:
        before = session.scalar(select(func.count()).select_from(UserGroupMembership))
    summary = run_sync(ad_settings)
    assert summary["mode"] == "incremental"
    for part in ("added", "changed", "disabled", "removed"):
        assert summary["users"][part]["count"] == 0, summary["users"]
    assert summary["memberships"] == {"added": {"count": 0, "names": []}, "removed": {"count": 0, "names": []}}
    with db.session_scope() as session:
        assert session.scalar(select(func.count()).select_from(UserGroupMembership)) == before


def test_dry_run_shows_the_diff_and_writes_nothing(clean_db, ad, ad_settings):
    summary = run_sync(ad_settings, dry_run=True)
    assert summary["dry_run"] and summary["mode"] == "full"
    assert summary["users"]["added"]["count"] >= SEEDED_USERS
    assert "user011 -> eng-backend" in summary["memberships"]["added"]["names"]
    assert "eng-backend -> eng-all" in summary["memberships"]["added"]["names"]
    with db.session_scope() as session:
        assert session.scalar(select(func.count()).select_from(User)) == 0
        assert session.scalar(select(func.count()).select_from(DirectorySyncState)) == 0


def test_incremental_sync_follows_changes_renames_and_deletions(clean_db, ad_reset, ad_settings, ad_admin):
    ad = ad_reset
    run_sync(ad_settings, full=True)
    with db.session_scope() as session:
        renamed_id = user(session, "user151").id
        deleted_id = user(session, "user152").id
        deleted_guid = user(session, "user152").object_guid
        usn_before = session.scalar(select(DirectorySyncState.highest_usn))
        assert user(session, "user152").id in member_user_ids_of_group(session, group(session, "sales-all").id)

    ad_admin.modify(group_dn(ad, "loop-b"), {"member": [(MODIFY_ADD, [user_dn(ad, "user150")])]})
    ad_admin.modify(user_dn(ad, "user012"), {"department": [(MODIFY_REPLACE, ["Platform"])]})
    ad_admin.modify_dn(user_dn(ad, "user151"), "CN=Anna Renamed")
    ad_admin.modify(f"CN=Anna Renamed,OU=Sales,OU=Corp,{ad['AD_BASE_DN']}",
                    {"sAMAccountName": [(MODIFY_REPLACE, ["anna"])],
                     "userPrincipalName": [(MODIFY_REPLACE, [f"anna@{REALM}"])]})
    ad_admin.delete(user_dn(ad, "user152"))
    newbie_dn = f"CN=newbie,OU=Engineering,OU=Corp,{ad['AD_BASE_DN']}"
    ad_admin.add(newbie_dn, ["top", "person", "organizationalPerson", "user"],
                 {"sAMAccountName": "newbie", "userPrincipalName": f"newbie@{REALM}", "givenName": "New",
                  "sn": "Bie", "userAccountControl": 512,
                  "unicodePwd": f'"{ad["AD_USER_PASSWORD"]}"'.encode("utf-16-le")})
    ad_admin.modify(group_dn(ad, "eng-backend"), {"member": [(MODIFY_ADD, [newbie_dn])]})

    # an administrator sees the tombstone through the Show Deleted control (svc-vdi does not, as in AD;
    # the sync then finds the deletion by the GUID listing)
    admin_settings = ad_settings.model_copy(update={"bind_dn": ad["AD_BIND_DN"],
                                                    "bind_password": ad_settings.bind_password.__class__(
                                                        ad["AD_BIND_PASSWORD"])})
    admin_directory = Directory(admin_settings)
    with admin_directory.service_connection() as conn:
        tombstones = admin_directory.deleted_since(conn, usn_before)
    assert [(t.guid, t.kind, t.name) for t in tombstones] == [(deleted_guid, "user", "user152")]

    summary = run_sync(ad_settings)
    assert summary["mode"] == "incremental"
    assert summary["read"]["users"] < 10 and summary["read"]["groups"] < 10  # only what changed was read
    assert summary["users"]["added"]["names"] == ["newbie"]
    assert summary["users"]["removed"]["names"] == ["user152"]
    changed = " ".join(summary["users"]["changed"]["names"])
    assert "user012 (department)" in changed and "anna (" in changed
    assert set(summary["memberships"]["added"]["names"]) >= {"user150 -> loop-b", "newbie -> eng-backend"}

    with db.session_scope() as session:
        anna = session.get(User, renamed_id)  # same row: matched by objectGUID, not by name
        assert (anna.username, anna.upn) == ("anna", f"anna@{REALM}")
        assert anna.dn.startswith("CN=Anna Renamed,")
        assert user(session, "user012").department == "Platform"
        gone = session.get(User, deleted_id)
        assert gone.deleted_in_directory and not gone.enabled
        assert gone.id not in member_user_ids_of_group(session, group(session, "sales-all").id)
        assert user(session, "user150").id in member_user_ids_of_group(session, group(session, "loop-a").id)
        newbie = user(session, "newbie")
        assert newbie.id in member_user_ids_of_group(session, group(session, "vdi-users").id)


def test_full_sync_detects_removal_by_guid_recreated_names_and_swaps(clean_db, ad_reset, ad_settings,
                                                                                   ad_admin):
    ad = ad_reset
    run_sync(ad_settings, full=True)
    with db.session_scope() as session:
        old_id = user(session, "user160").id
        id161, id162 = user(session, "user161").id, user(session, "user162").id
        issue_token(session, user(session, "user160"), name="script")
    # two accounts swap their logon names (through a temporary one, as AD requires)
    for dn, name in ((user_dn(ad, "user161"), "swap-tmp"), (user_dn(ad, "user162"), "user161"),
                     (user_dn(ad, "user161"), "user162")):
        ad_admin.modify(dn, {"sAMAccountName": [(MODIFY_REPLACE, [name])],
                             "userPrincipalName": [(MODIFY_REPLACE, [f"{name}@{REALM}"])]})
    ad_admin.delete(user_dn(ad, "user160"))
    ad_admin.add(user_dn(ad, "user160"), ["top", "person", "organizationalPerson", "user"],
                 {"sAMAccountName": "user160", "userAccountControl": 512,
                  "unicodePwd": f'"{ad["AD_USER_PASSWORD"]}"'.encode("utf-16-le")})

    summary = run_sync(ad_settings, full=True)
    assert summary["users"]["removed"]["names"] == ["user160"]
    assert summary["revoked"] == {"users": 1, "tokens": 1, "sessions": 0}
    assert summary["users"]["added"]["names"] == ["user160"]
    with db.session_scope() as session:
        old = session.get(User, old_id)
        assert old.deleted_in_directory and old.username.startswith("user160~")
        assert session.scalar(select(func.count()).select_from(ApiToken).where(ApiToken.user_id == old_id)) == 0
        revoked = session.scalar(select(Event).where(Event.code == "user.access_revoked", Event.user_id == old_id))
        assert "removed from the directory" in revoked.message
        new = user(session, "user160")
        assert new.id != old_id and not new.deleted_in_directory
        # the new account is in no group yet: the old one's memberships did not carry over
        assert group_ids_for_user(session, new.id) == set()
        assert (session.get(User, id161).username, session.get(User, id162).username) == ("user162", "user161")


def test_mapping_rows_follow_the_configuration_and_manual_rows_stay(clean_db, ad, ad_settings):
    with db.session_scope() as session:
        template = Template(name="office-tpl")
        session.add(template)
        session.flush()
        session.add(Pool(name="office", template_id=template.id, size=2))
    run_sync(ad_settings, full=True)
    with db.session_scope() as session:
        vdi_users = group(session, "vdi-users")
        ent = session.scalar(select(Entitlement).where(Entitlement.group_id == vdi_users.id))
        assert ent is not None and ent.source == "directory"
        # an administrator also grants HelpDesk to vdi-admins by hand
        session.add(RoleAssignment(group_id=group(session, "vdi-admins").id, role=Role.HELP_DESK))

    narrower = ad_settings.model_copy(update={"role_map": {"eng-all": Role.HELP_DESK}, "entitlement_map": {}})
    summary = run_sync(narrower, full=False)
    assert summary["permissions"]["roles_removed"] == 1 and summary["permissions"]["entitlements_removed"] == 1
    with db.session_scope() as session:
        rows = {(r.group_id, r.role, r.source) for r in session.scalars(select(RoleAssignment))}
        admins, eng = group(session, "vdi-admins").id, group(session, "eng-all").id
        assert rows == {(admins, Role.HELP_DESK, "manual"), (eng, Role.HELP_DESK, "directory")}
        assert session.scalar(select(func.count()).select_from(Entitlement)) == 0


def test_cli_dry_run_then_sync(clean_db, ad, ad_env, pg_url, tmp_path):
    env = {**os.environ, "VDI_DATABASE_URL": pg_url, "VDI_DATA_DIR": str(tmp_path)}
    env.pop("VDI_REDIS_URL", None)
    vdi = [sys.executable, "-m", "manager.cli", "directory", "sync"]
    dry = subprocess.run(vdi + ["--dry-run"], env=env, capture_output=True, text=True, timeout=120)
    assert dry.returncode == 0, dry.stderr
    diff = json.loads(dry.stdout)
    assert diff["dry_run"] and diff["users"]["added"]["count"] >= SEEDED_USERS
    with db.session_scope() as session:
        assert session.scalar(select(func.count()).select_from(User)) == 0

    real = subprocess.run(vdi + ["--full"], env=env, capture_output=True, text=True, timeout=120)
    assert real.returncode == 0, real.stderr
    assert json.loads(real.stdout)["mode"] == "full"
    with db.session_scope() as session:
        assert session.scalar(select(func.count()).select_from(User).where(User.username.in_(SEEDED))) == 200

    broken = subprocess.run(vdi, env={**env, "VDI_AD_BIND_PASSWORD": "wrong"}, capture_output=True, text=True,
                            timeout=120)
    assert broken.returncode == 1 and "VDI_AD_BIND_PASSWORD" in broken.stderr and "Traceback" not in broken.stderr


def test_api_dry_run_returns_the_diff(ad, ad_env, client):
    response = client.post("/api/v1/directory/sync", json={"dry_run": True})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["dry_run"] and body["users"]["added"]["count"] >= SEEDED_USERS
    assert client.get("/api/v1/users", params={"per_page": 1}).json()["total"] == 1  # only the local admin


def test_scheduled_trigger_queues_one_sync_when_due(ad, ad_env, app):
    import time

    from manager.identity.sync_tasks import sync_if_due
    from manager.models import Job

    with db.session_scope() as session:
        job = sync_if_due(session)
        assert job is not None and job.kind == "directory.sync"
        assert sync_if_due(session).id == job.id  # already queued: the same job, not a second one
        job_id = job.id
    deadline = time.monotonic() + 60
    while True:
        with db.session_scope() as session:
            state = session.get(Job, job_id).state
        if state in ("succeeded", "failed"):
            break
        assert time.monotonic() < deadline, "the queued sync did not finish"
        time.sleep(0.1)
    assert state == "succeeded"
    with db.session_scope() as session:
        assert sync_if_due(session) is None  # it just ran
        assert session.scalar(select(func.count()).select_from(User).where(User.username.in_(SEEDED))) == 200


def test_the_leader_queues_the_scheduled_sync_by_itself(ad, ad_env, app, monkeypatch):
    """VDI_AD_SYNC_INTERVAL_SECONDS is kept by the manager's "directory-sync" singleton loop: a running manager
    that leads queues a sync (and runs it) without anyone asking."""
    import time

    from fastapi.testclient import TestClient

    from manager.identity.settings import get_directory_settings
    from manager.models import Job

    monkeypatch.setenv("VDI_AD_SYNC_INTERVAL_SECONDS", "30")  # checked every 10 s
    get_directory_settings.cache_clear()
    with TestClient(app):
        deadline = time.monotonic() + 90
        while True:
            with db.session_scope() as session:
                job = session.scalar(select(Job).where(Job.kind == "directory.sync"))
                state = job.state if job is not None else None
            if state in ("succeeded", "failed"):
                break
            assert time.monotonic() < deadline, f"no scheduled sync ran (job: {state})"
            time.sleep(0.5)
    assert state == "succeeded" and job.created_by == "system"
    with db.session_scope() as session:
        assert session.scalar(select(func.count()).select_from(User).where(User.username.in_(SEEDED))) == 200
