"""Taking access away and rolling updates, through the real paths (HTTP API, jobs, node agents on the libvirt test
driver, real qcow2 overlays): disabling a user releases their pool desktops by each pool's policy, ends their
sessions and flags their browser consoles for closing; removing an entitlement takes back only the desktops of
users no longer entitled; a manual desktop's pending template version is applied at its user's logoff."""
from __future__ import annotations

import shutil

from sqlalchemy import select

from tests.integration.broker.conftest import API, bearer, wait_for_jobs
from tests.integration.broker.test_pool_lifecycle import connect, desktop_row, events


def open_browser_console(user_id: str, desktop_id: str) -> str:
    """A browser console as the proxy records one it has opened (its ticket spent, not closed)."""
    from manager import db
    from manager.models import BrowserConsole, utcnow

    with db.session_scope() as s:
        row = BrowserConsole(token_hash=f"h-{user_id[:8]}-{desktop_id[:8]}", user_id=user_id, desktop_id=desktop_id,
                             expires_at=utcnow(), opened_at=utcnow())
        s.add(row)
        s.flush()
        return row.id


def close_requested(console_id: str) -> bool:
    from manager import db
    from manager.models import BrowserConsole

    with db.session_scope() as s:
        return s.get(BrowserConsole, console_id).close_requested_at is not None


def live_sessions(user_id: str) -> int:
    from core.enums import SessionState
    from manager import db
    from manager.models import DesktopSession

    with db.session_scope() as s:
        return len(s.scalars(select(DesktopSession.id).where(DesktopSession.user_id == user_id,
                                                             DesktopSession.state != SessionState.ENDED)).all())


def test_disabling_a_user_releases_their_pool_desktops_and_ends_their_consoles(world, client, anon_client):
    world.hosts(1)
    automatic = world.pool(1, os_type="windows_11", protocols="rdp", ip_prefix="10.31")
    manual = world.pool(1, pool_type="manual", os_type="windows_11", protocols="rdp", ip_prefix="10.32")
    leased = world.pool(1, pool_type="time_based", os_type="windows_11", protocols="rdp", ip_prefix="10.33",
                        lease_seconds=3600, reclaim_policy="deprovision")
    hana, token = world.user("hana")
    ivan, ivan_token = world.user("ivan")
    for pool_id in (automatic, manual, leased):
        world.entitle(pool_id=pool_id, user_id=hana)
    world.entitle(pool_id=manual, user_id=ivan)
    got = {}
    for pool_id in (automatic, manual, leased):
        response = connect(anon_client, token, pool_id=pool_id)
        assert response.status_code == 200, response.text
        got[pool_id] = response.json()["desktop_id"]
    mine = open_browser_console(hana, got[automatic])
    others = open_browser_console(ivan, got[manual])  # an administrator-like bystander's console: untouched
    assert live_sessions(hana) == 3

    response = client.patch(f"{API}/users/{hana}", json={"enabled": False})
    assert response.status_code == 200, response.text
    wait_for_jobs()

    assert live_sessions(hana) == 0
    assert close_requested(mine) and not close_requested(others)
    for pool_id in (automatic, manual):  # reset to the template, free for the next user
        row = desktop_row(got[pool_id])
        assert row["assigned"] is None and row["task"] is None and row["power"].value == "down", (pool_id, row)
    assert desktop_row(got[leased]) is None  # the time-based pool's policy: deleted
    assert len(events("desktop.reset")) == 2 and len(events("desktop.deprovisioned")) == 1
    revoked = events("broker.access_revoked")
    assert sorted(e[1] for e in revoked) == sorted(got.values()) and {e[3] for e in revoked} == {"warning"}
    summary = [e[2] for e in events("user.access_revoked")]
    assert len(summary) == 1 and "3 pool desktop(s) taken back, 1 browser console(s) closed" in summary[0]
    # ivan takes the manual desktop hana held: clean and his now
    assert connect(anon_client, ivan_token, pool_id=manual).json()["desktop_id"] == got[manual]
    assert anon_client.get(f"{API}/auth/me", headers=bearer(token)).status_code == 401


def test_removing_an_entitlement_takes_back_only_what_is_no_longer_entitled(world, client, anon_client):
    from manager import db
    from manager.models import Entitlement

    world.hosts(1)
    pool_id = world.pool(3, pool_type="manual", os_type="windows_11", protocols="rdp", ip_prefix="10.34")
    staff = world.group("staff")
    jo, jo_token = world.user("jo")
    kim, kim_token = world.user("kim", groups=(staff,))
    world.entitle(pool_id=pool_id, user_id=jo)
    world.entitle(pool_id=pool_id, user_id=kim)
    world.entitle(pool_id=pool_id, group_id=staff)
    jo_desktop = connect(anon_client, jo_token, pool_id=pool_id).json()["desktop_id"]
    kim_desktop = connect(anon_client, kim_token, pool_id=pool_id).json()["desktop_id"]
    with db.session_scope() as s:
        direct = {e.user_id: e.id for e in s.scalars(select(Entitlement).where(Entitlement.pool_id == pool_id,
                                                                               Entitlement.user_id.is_not(None)))}
    for user_id in (jo, kim):
        assert client.delete(f"{API}/entitlements/{direct[user_id]}").status_code == 204
    wait_for_jobs()
    assert desktop_row(jo_desktop)["assigned"] is None and live_sessions(jo) == 0  # gone with the entitlement
    assert desktop_row(kim_desktop)["assigned"] == kim and live_sessions(kim) == 1  # still entitled by group
    assert [e[1] for e in events("broker.access_revoked")] == [jo_desktop]


def test_deleting_a_group_takes_back_what_only_it_granted(world, client, anon_client):
    """The group's entitlements and memberships cascade with it: its members (a nested group's too) lose the pool
    desktops no other path entitles them to, including a parent group's pool reached only through it."""
    world.hosts(1)
    eng_pool = world.pool(3, pool_type="manual", os_type="windows_11", protocols="rdp", ip_prefix="10.35")
    all_pool = world.pool(2, pool_type="manual", os_type="windows_11", protocols="rdp", ip_prefix="10.36")
    everyone = world.group("all")
    eng = world.group("eng", parents=(everyone,))
    backend = world.group("backend", parents=(eng,))
    lee, lee_token = world.user("lee", groups=(backend,))  # in eng only through backend
    mo, mo_token = world.user("mo", groups=(eng,))
    nia, nia_token = world.user("nia", groups=(everyone,))
    world.entitle(pool_id=eng_pool, group_id=eng)
    world.entitle(pool_id=all_pool, group_id=everyone)
    world.entitle(pool_id=eng_pool, user_id=mo)  # mo keeps eng_pool by a direct entitlement
    held = {(who, pool_id): connect(anon_client, token, pool_id=pool_id).json()["desktop_id"]
            for who, token, pools in ((lee, lee_token, (eng_pool, all_pool)), (mo, mo_token, (eng_pool,)),
                                      (nia, nia_token, (all_pool,)))
            for pool_id in pools}

    assert client.delete(f"{API}/groups/{eng}").status_code == 204
    wait_for_jobs()
    assert desktop_row(held[lee, eng_pool])["assigned"] is None
    assert desktop_row(held[lee, all_pool])["assigned"] is None  # all reached lee only through eng
    assert live_sessions(lee) == 0
    assert desktop_row(held[mo, eng_pool])["assigned"] == mo and live_sessions(mo) == 1
    assert desktop_row(held[nia, all_pool])["assigned"] == nia
    assert sorted(e[1] for e in events("broker.access_revoked")) == sorted([held[lee, eng_pool],
                                                                             held[lee, all_pool]])
    assert client.get(f"{API}/groups/{backend}").status_code == 200  # the nested group stays, now on its own


def test_a_pending_template_version_is_applied_at_the_manual_desktops_logoff(world, client, anon_client):
    from image_manager import qcow2
    from manager import db
    from manager.models import Desktop, Template, TemplateVersion, Volume

    world.hosts(1)
    pool_id = world.pool(1, pool_type="manual", os_type="windows_11", protocols="rdp", ip_prefix="10.35")
    lena, token = world.user("lena")
    world.entitle(pool_id=pool_id, user_id=lena)
    got = connect(anon_client, token, pool_id=pool_id).json()
    desktop_id = got["desktop_id"]
    with db.session_scope() as s:  # version 2 of the pool's template: another real qcow2
        desktop = s.get(Desktop, desktop_id)
        v1 = s.get(TemplateVersion, desktop.template_version_id)
        v2_path = world.template_image.parent / f"{world.prefix}-2.qcow2"
        shutil.copyfile(world.template_image, v2_path)
        volume = Volume(path=str(v2_path), role="template", virtual_size=64 * 1024 * 1024)
        s.add(volume)
        s.flush()
        v2 = TemplateVersion(template_id=v1.template_id, number=2, name="v2", volume_id=volume.id)
        s.add(v2)
        s.flush()
        s.get(Template, v1.template_id).latest_version_id = v2.id
        v1_id, v2_id = v1.id, v2.id
        disk = s.get(Volume, desktop.volume_id).path

    rolled = client.post(f"{API}/pools/{pool_id}/template-version", json={"template_version_id": v2_id})
    assert rolled.status_code == 200, rolled.text
    assert rolled.json()["pending"] == [got["desktop_name"]]  # she is on it: it waits for her logoff
    wait_for_jobs()
    with db.session_scope() as s:
        row = s.get(Desktop, desktop_id)
        assert (row.template_version_id, row.pending_template_version_id) == (v1_id, v2_id)

    off = anon_client.post(f"{API}/broker/logoff", json={"session_id": got["session_id"]}, headers=bearer(token))
    assert off.status_code == 200, off.text
    wait_for_jobs()
    with db.session_scope() as s:
        row = s.get(Desktop, desktop_id)
        assert (row.template_version_id, row.pending_template_version_id) == (v2_id, None)
        assert row.assigned_user_id == lena and row.task_state is None  # a manual desktop stays hers
    assert qcow2.read_header(disk).backing_file == str(v2_path)
    logoff = [e[2] for e in events("broker.logoff")]
    assert len(logoff) == 1 and "re-imaged onto its new template version" in logoff[0]
    assert len(events("desktop.reimaged")) == 1


def test_deleting_a_user_resets_the_desktop_they_held(world, client, anon_client):
    world.hosts(1)
    pool_id = world.pool(1, os_type="windows_11", protocols="rdp", ip_prefix="10.36")
    max_, token = world.user("max")
    world.entitle(pool_id=pool_id, user_id=max_)
    desktop_id = connect(anon_client, token, pool_id=pool_id).json()["desktop_id"]
    assert client.delete(f"{API}/users/{max_}").status_code == 204
    wait_for_jobs()
    row = desktop_row(desktop_id)  # not merely freed by the foreign key: reset before the next user gets it
    assert row["assigned"] is None and row["task"] is None and row["power"].value == "down"
    assert len(events("desktop.reset")) == 1 and [e[1] for e in events("broker.access_revoked")] == [desktop_id]
