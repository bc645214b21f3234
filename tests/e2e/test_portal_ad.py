"""The portal with Active Directory (issue 21's acceptance): alice, an account of the Samba AD DC
(scripts/test-ad.sh) entitled to an automatic pool through an AD group the manager maps (VDI_AD_ENTITLEMENT_MAP),
logs into the portal with her directory password, connects, reboots her desktop, and logs off; the automatic pool
takes the desktop back and resets it: what was written to its disk is gone (a fresh overlay).

A manager of its own (`vdi demo` + `vdi serve` on a database of its own) pointed at the DC. Its desktops run on the
demo's libvirt test-driver hosts, which cannot set a SPICE ticket: they speak RDP at an address written as the guest
agent would report it (as in test_portal.py), and the data written to the desktop's disk is written with qemu-io.
The real-guest side of a reset (a file written through the guest agent is gone) is
tests/integration/broker/test_real_guests.py's."""
from __future__ import annotations

import json
import os
import re
import shutil
import ssl
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import expect
from sqlalchemy import text

from image_manager import qcow2
from manager.db import make_engine
from tests.e2e.browser import new_guarded_context
from tests.e2e.server import RunningManager, running_manager
from tests.e2e.test_actions import _demo_template, _finish
from tests.harness import samba_ad
from tests.harness.postgres import PostgresUnavailable, fresh_database

POOL = "e2e-ad"
GROUP = "portal-users"


def _add_alice(ad: dict[str, str]) -> str:
    """alice (OU=Engineering) and the group portal-users holding her, made by the domain Administrator."""
    from ldap3 import Connection, Server, Tls

    tls = Tls(validate=ssl.CERT_REQUIRED, ca_certs_file=ad["AD_CA_FILE"])
    conn = Connection(Server(ad["AD_LDAPS_URL"], use_ssl=True, tls=tls, connect_timeout=5), ad["AD_BIND_DN"],
                      ad["AD_BIND_PASSWORD"], auto_bind=True, raise_exceptions=True)
    try:
        alice = f"CN=alice,OU=Engineering,OU=Corp,{ad['AD_BASE_DN']}"
        conn.add(alice, ["top", "person", "organizationalPerson", "user"],
                 {"sAMAccountName": "alice", "userPrincipalName": f"alice@{samba_ad.REALM}", "givenName": "Alice",
                  "sn": "Directory", "displayName": "Alice Directory", "userAccountControl": 512,
                  "unicodePwd": f'"{ad["AD_USER_PASSWORD"]}"'.encode("utf-16-le")})
        conn.add(f"CN={GROUP},OU=Groups,OU=Corp,{ad['AD_BASE_DN']}", ["top", "group"],
                 {"sAMAccountName": GROUP, "member": [alice]})
    finally:
        conn.unbind()
    return f"alice@{samba_ad.REALM}"


@pytest.fixture(scope="module")
def ad() -> Iterator[dict[str, str]]:
    if os.geteuid() != 0:
        pytest.skip("the Samba AD test DC needs root (scripts/test-ad.sh binds ports 88/389/636)")
    try:
        env, started = samba_ad.start()
    except samba_ad.DirectoryUnavailable as exc:
        pytest.fail(str(exc))
    samba_ad.mark_dirty()
    try:
        yield env
    finally:
        samba_ad.reset()
        if started:
            samba_ad.stop()


@pytest.fixture(scope="module")
def ad_manager(ad) -> Iterator[RunningManager]:
    """The demo manager pointed at the DC, with an automatic pool of one desktop that portal-users may use."""
    directory = {"VDI_AD_URL": ad["AD_LDAPS_URL"], "VDI_AD_BIND_DN": f"svc-vdi@{samba_ad.REALM}",
                 "VDI_AD_BIND_PASSWORD": ad["AD_USER_PASSWORD"], "VDI_AD_BASE_DN": ad["AD_BASE_DN"],
                 "VDI_AD_CA_FILE": ad["AD_CA_FILE"], "VDI_AD_ENTITLEMENT_MAP": json.dumps({GROUP: [f"pool:{POOL}"]})}
    try:
        with fresh_database("vdi_e2e_ad") as url, running_manager(url, env=directory) as server:
            yield server
    except PostgresUnavailable as exc:
        pytest.fail(str(exc))


def _setup_pool(server: RunningManager) -> dict:
    api = server.admin_api
    made = api.post("/pools", json={"name": POOL, "pool_type": "automatic", "template_id": _demo_template(api),
                                    "size": 1, "name_pattern": f"{POOL}-#"})
    made.raise_for_status()
    pool = made.json()
    _finish(api, api.post(f"/pools/{pool['id']}/provision").json())
    engine = make_engine(server.database_url)
    with engine.begin() as conn:
        conn.execute(text("UPDATE desktops SET os_type = 'windows_11', console_protocols = 'rdp', ip = '10.98.0.1' "
                          "WHERE pool_id = :pool"), {"pool": pool["id"]})
    engine.dispose()
    return pool


def _overlay(server: RunningManager, desktop_id: str) -> Path:
    engine = make_engine(server.database_url)
    with engine.connect() as conn:
        path = conn.execute(text("SELECT v.path FROM desktops d JOIN volumes v ON v.id = d.volume_id "
                                 "WHERE d.id = :id"), {"id": desktop_id}).scalar_one()
    engine.dispose()
    return Path(path)


def _user(server: RunningManager, upn: str) -> dict:
    engine = make_engine(server.database_url)
    with engine.connect() as conn:
        row = conn.execute(text("SELECT id, source, domain, username FROM users WHERE upn = :upn"),
                           {"upn": upn}).mappings().one()
    engine.dispose()
    return dict(row)


def _wait_for_event(server: RunningManager, code: str, desktop_id: str, timeout: float = 180.0) -> dict:
    """The first event `code` about the desktop (a wait for the reset job, not a speed assertion)."""
    deadline = time.monotonic() + timeout
    while True:
        found = server.admin_api.get("/events", params={"code": code, "desktop_id": desktop_id}).json()
        if found["total"]:
            return found["items"][0]
        assert time.monotonic() < deadline, f"no {code} event for desktop {desktop_id} after {timeout} s"
        time.sleep(0.5)


def test_alice_from_active_directory_reboots_logs_off_and_her_desktop_is_reset(ad, ad_manager, browser,
                                                                               offsite_guard):
    if not shutil.which("qemu-io"):
        pytest.fail("qemu-io (qemu-utils) is needed to write to the desktop's disk")
    upn = _add_alice(ad)
    pool = _setup_pool(ad_manager)
    api = ad_manager.admin_api
    _finish(api, api.post("/directory/sync", json={"full": True}).json())  # the groups and the entitlement map (portal-users -> pool)

    context = new_guarded_context(browser, offsite_guard, ad_manager.base_url)
    try:
        page = context.new_page()
        page.goto("/")
        page.get_by_label("Username").fill(upn)
        page.get_by_label("Password").fill(ad["AD_USER_PASSWORD"])  # her password in the directory
        page.get_by_role("button", name="Log in").click()
        expect(page).to_have_url(re.compile(r"/portal$"))
        alice = _user(ad_manager, upn)
        assert (alice["source"], alice["domain"], alice["username"]) == ("ad", "CORP", "alice")

        pool_card = page.get_by_role("article", name=POOL)
        with page.expect_download() as download:
            pool_card.get_by_role("button", name="Connect").click()
        name = download.value.suggested_filename.removesuffix(".rdp")
        desk = page.get_by_role("article", name=name)
        expect(desk.get_by_text("In use")).to_be_visible()
        desktop_id = desk.get_attribute("data-desktop")
        assert api.get(f"/desktops/{desktop_id}").json()["assigned_user_id"] == alice["id"]

        desk.get_by_role("button", name="Reboot").click()
        expect(page.get_by_role("status").filter(has_text="Your desktop is rebooting.")).to_be_visible()
        assert _wait_for_event(ad_manager, "desktop.rebooted", desktop_id)["user_id"] in (None, alice["id"])

        # her work on the desktop's disk
        overlay = _overlay(ad_manager, desktop_id)
        subprocess.run(["qemu-io", "-f", "qcow2", "-c", "write -P 0x5a 0 1M", str(overlay)], check=True,
                       capture_output=True, timeout=60)
        assert not qcow2.is_empty(overlay)

        desk.get_by_role("button", name="Log off").click()
        expect(page.get_by_role("status").filter(has_text="You are logged off.")).to_be_visible()
        expect(page.get_by_role("article", name=name)).to_have_count(0)  # back to the automatic pool
    finally:
        context.close()

    reset = _wait_for_event(ad_manager, "desktop.reset", desktop_id)
    assert reset["pool_id"] == pool["id"]
    desktop = api.get(f"/desktops/{desktop_id}").json()
    assert desktop["assigned_user_id"] is None and desktop["task_state"] is None
    assert qcow2.is_empty(_overlay(ad_manager, desktop_id))  # a fresh overlay: her changes are gone
    logoff = api.get("/events", params={"code": "broker.logoff", "desktop_id": desktop_id}).json()["items"]
    assert [e["user_id"] for e in logoff] == [alice["id"]]
