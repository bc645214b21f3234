"""The user's own actions on their desktops (the portal's buttons, through the API): what /me/desktops says a
desktop allows, reboot, reset to a clean desktop, lease extension within the pool's limit, the remembered portal
choices; another user's desktop id is always a 404, never a 403."""
from __future__ import annotations

import datetime as dt

from tests.integration.broker.conftest import API, bearer, wait_for_jobs
from tests.integration.broker.test_pool_lifecycle import connect, desktop_row, events


def mine(client, token, desktop_id):
    return next(d for d in client.get(f"{API}/me/desktops", headers=bearer(token)).json() if d["id"] == desktop_id)


def test_reboot_and_reset_own_desktop_and_flags(world, anon_client):
    from manager import db
    from manager.models import Desktop

    world.hosts(1)
    pool_id = world.pool(2, os_type="windows_11", protocols="spice,rdp", ip_prefix="10.21")
    erin, erin_token = world.user("erin")
    fred, fred_token = world.user("fred")
    world.entitle(pool_id=pool_id, user_id=erin)
    world.entitle(pool_id=pool_id, user_id=fred)
    got = connect(anon_client, erin_token, pool_id=pool_id).json()
    desktop_id = got["desktop_id"]

    d = mine(anon_client, erin_token, desktop_id)
    assert d["pool_type"] == "automatic" and d["how"] == "pool" and d["session_id"] == got["session_id"]
    assert d["in_use"] and d["can_reboot"] and d["can_reset"] and not d["can_extend"]
    assert not d["maintenance"] and not d["new_image_at_logoff"]
    with db.session_scope() as s:  # a rolling update waits for her logoff
        row = s.get(Desktop, desktop_id)
        row.pending_template_version_id = row.template_version_id
    assert mine(anon_client, erin_token, desktop_id)["new_image_at_logoff"]
    from core.enums import HostStatus
    from manager.models import Host
    with db.session_scope() as s:  # its host goes into maintenance (as the host's page would set it)
        host = s.get(Host, s.get(Desktop, desktop_id).host_id)
        host.status, before = HostStatus.MAINTENANCE, host.status
    assert mine(anon_client, erin_token, desktop_id)["maintenance"]
    with db.session_scope() as s:
        s.get(Host, s.get(Desktop, desktop_id).host_id).status = before

    # fred cannot act on erin's desktop: it does not exist for him
    for action in ("reboot", "reset", "extend"):
        r = anon_client.post(f"{API}/me/desktops/{desktop_id}/{action}", headers=bearer(fred_token))
        assert r.status_code == 404 and desktop_id in r.json()["detail"], (action, r.text)
    assert anon_client.post(f"{API}/me/desktops/nope/reboot", headers=bearer(erin_token)).status_code == 404

    rebooted = anon_client.post(f"{API}/me/desktops/{desktop_id}/reboot", headers=bearer(erin_token))
    assert rebooted.status_code == 200, rebooted.text
    assert rebooted.json()["power_state"] == "up"
    assert [e[1] for e in events("desktop.rebooted")] == [desktop_id]

    reset = anon_client.post(f"{API}/me/desktops/{desktop_id}/reset", headers=bearer(erin_token))
    assert reset.status_code == 202, reset.text
    wait_for_jobs()
    assert len(events("desktop.reset")) == 1 and [e[0] for e in events("broker.reset_by_user")] == [erin]
    row = desktop_row(desktop_id)
    assert row["assigned"] is None and row["task"] is None  # back in the pool, clean
    assert anon_client.get(f"{API}/me/sessions", headers=bearer(erin_token)).json() == []
    again = connect(anon_client, erin_token, pool_id=pool_id).json()  # her next connect: a clean desktop
    assert again["assignment"] == "new"
    # an automatic pool's desktop has no lease to extend
    refused = anon_client.post(f"{API}/me/desktops/{again['desktop_id']}/extend", headers=bearer(erin_token))
    assert refused.status_code == 409 and "no lease" in refused.json()["detail"]


def test_a_manual_pool_desktop_keeps_its_work(world, anon_client):
    world.hosts(1)
    pool_id = world.pool(1, pool_type="manual", os_type="windows_10", protocols="rdp", ip_prefix="10.22")
    gina, gina_token = world.user("gina")
    world.entitle(pool_id=pool_id, user_id=gina)
    got = connect(anon_client, gina_token, pool_id=pool_id).json()
    assert not mine(anon_client, gina_token, got["desktop_id"])["can_reset"]
    r = anon_client.post(f"{API}/me/desktops/{got['desktop_id']}/reset", headers=bearer(gina_token))
    assert r.status_code == 409 and "administrator" in r.json()["detail"]
    assert desktop_row(got["desktop_id"])["task"] is None


def test_extend_a_lease_up_to_the_pools_limit(world, client, anon_client):
    from manager import db
    from manager.models import Desktop

    world.hosts(1)
    pool_id = world.pool(1, pool_type="time_based", os_type="windows_11", protocols="rdp", ip_prefix="10.23", lease_seconds=600,
                         max_lease_seconds=1500)
    hal, hal_token = world.user("hal")
    world.entitle(pool_id=pool_id, user_id=hal)
    got = connect(anon_client, hal_token, pool_id=pool_id).json()
    desktop_id = got["desktop_id"]
    taken = desktop_row(desktop_id)["lease_until"] - dt.timedelta(seconds=600)
    d = mine(anon_client, hal_token, desktop_id)
    assert d["can_extend"] and d["can_reset"]
    assert dt.datetime.fromisoformat(d["lease_limit"]) == taken + dt.timedelta(seconds=1500)

    first = anon_client.post(f"{API}/me/desktops/{desktop_id}/extend", headers=bearer(hal_token))
    assert first.status_code == 200, first.text
    assert dt.datetime.fromisoformat(first.json()["lease_until"]) == taken + dt.timedelta(seconds=1200)
    second = anon_client.post(f"{API}/me/desktops/{desktop_id}/extend", headers=bearer(hal_token)).json()
    assert dt.datetime.fromisoformat(second["lease_until"]) == taken + dt.timedelta(seconds=1500)  # cut at limit
    third = anon_client.post(f"{API}/me/desktops/{desktop_id}/extend", headers=bearer(hal_token))
    assert third.status_code == 409 and "limit" in third.json()["detail"]
    assert not mine(anon_client, hal_token, desktop_id)["can_extend"]
    assert len(events("desktop.lease_extended")) == 2

    # an ended lease cannot be extended; and an expiry that read the old end keeps an extended lease
    with db.session_scope() as s:
        s.get(Desktop, desktop_id).lease_until = dt.datetime.now(dt.timezone.utc) - dt.timedelta(seconds=1)
    ended = anon_client.post(f"{API}/me/desktops/{desktop_id}/extend", headers=bearer(hal_token))
    assert ended.status_code == 409 and "ended" in ended.json()["detail"]
    from broker import assignment
    with db.session_scope() as s:
        s.get(Desktop, desktop_id).lease_until = dt.datetime.now(dt.timezone.utc) + dt.timedelta(seconds=60)
    with db.session_scope() as s:
        assert not assignment.release(s, desktop_id, user_id=hal, lease_ended_by=dt.datetime.now(dt.timezone.utc))
    assert desktop_row(desktop_id)["assigned"] == hal

    # a pool without a limit allows no extension; the limit cannot be shorter than one lease
    assert client.patch(f"{API}/pools/{pool_id}", json={"max_lease_seconds": None}).status_code == 200
    none = anon_client.post(f"{API}/me/desktops/{desktop_id}/extend", headers=bearer(hal_token))
    assert none.status_code == 409 and "does not allow" in none.json()["detail"]
    short = client.patch(f"{API}/pools/{pool_id}", json={"max_lease_seconds": 300})
    assert short.status_code == 422 and "max_lease_seconds (300)" in short.json()["detail"]


def test_portal_preferences_are_remembered_per_user(world, anon_client):
    ida, ida_token = world.user("ida")
    jo, jo_token = world.user("jo")
    assert anon_client.get(f"{API}/me/preferences", headers=bearer(ida_token)).json() == \
        {"console_client": "native", "auto_connect": False}
    r = anon_client.patch(f"{API}/me/preferences", json={"console_client": "browser", "auto_connect": True},
                          headers=bearer(ida_token))
    assert r.status_code == 200 and r.json() == {"console_client": "browser", "auto_connect": True}
    assert anon_client.get(f"{API}/me/preferences", headers=bearer(ida_token)).json()["auto_connect"] is True
    assert anon_client.get(f"{API}/me/preferences", headers=bearer(jo_token)).json()["auto_connect"] is False
    bad = anon_client.patch(f"{API}/me/preferences", json={"console_client": "telnet"}, headers=bearer(ida_token))
    assert bad.status_code == 422 and "console_client" in bad.text
    null = anon_client.patch(f"{API}/me/preferences", json={"auto_connect": None}, headers=bearer(ida_token))
    assert null.status_code == 422 and "auto_connect" in null.json()["detail"]
