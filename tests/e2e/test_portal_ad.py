"""The portal with Active Directory on a real guest (issue 21's acceptance, literally): alice, an account of the Samba
AD DC (scripts/test-ad.sh) entitled to an automatic pool through an AD group the manager maps
(VDI_AD_ENTITLEMENT_MAP), logs into the portal with her directory password, chooses "In the browser" and clicks
Connect on her pool; noVNC's canvas shows the real guest's screen (compared with the node's screenshot). Back on the
portal she reboots her desktop, writes a file in it (through the guest agent), and logs off; the automatic pool
takes the desktop back and resets it: its overlay is a fresh one (nothing written to it), and the guest booted
from it has no such file.

A manager of its own pointed at the DC: `vdi demo --real-guests yes` (tests.e2e.server.manager_with_real_guests,
its own manager id, every guest it defined removed afterwards). vs-b (a test-driver host) goes into maintenance so
that the pool's one desktop is a real QEMU guest on vs-a; the demo's carol-finance is powered off, so that one real
guest runs at a time."""
from __future__ import annotations

import json
import os
import re
import secrets
import ssl
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import expect
from sqlalchemy import text

from image_manager import qcow2
from manager.db import make_engine
from manager.embedded_nodes import load_config
from manager.nodes.client import NodeClient
from tests.e2e.browser import assert_canvas_shows, new_guarded_context
from tests.e2e.server import RunningManager, manager_with_real_guests
from tests.e2e.test_actions import _demo_template, _finish
from tests.harness import samba_ad
from tests.harness.managers import wait_for
from tests.harness.postgres import PostgresUnavailable

pytestmark = [pytest.mark.libvirt, pytest.mark.slow]
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
    """The demo manager with real guests, pointed at the DC; portal-users may use the pool POOL (made by the test)."""
    directory = {"VDI_AD_URL": ad["AD_LDAPS_URL"], "VDI_AD_BIND_DN": f"svc-vdi@{samba_ad.REALM}",
                 "VDI_AD_BIND_PASSWORD": ad["AD_USER_PASSWORD"], "VDI_AD_BASE_DN": ad["AD_BASE_DN"],
                 "VDI_AD_CA_FILE": ad["AD_CA_FILE"], "VDI_AD_ENTITLEMENT_MAP": json.dumps({GROUP: [f"pool:{POOL}"]})}
    try:
        with manager_with_real_guests("vdi-portal-ad", env=directory) as server:
            yield server
    except PostgresUnavailable as exc:  # raised before the yield only
        pytest.fail(str(exc))


def _setup_pool(server: RunningManager) -> dict:
    """An automatic pool of one desktop on vs-a (qemu:///system): vs-b is in maintenance, carol-finance is off."""
    api = server.admin_api
    hosts = {h["name"]: h["id"] for h in api.get("/hosts", params={"per_page": 100}).json()["items"]}
    api.post(f"/hosts/{hosts['vs-b']}/maintenance").raise_for_status()
    demo = api.get("/desktops", params={"per_page": 100}).json()["items"]
    (carols,) = [d["id"] for d in demo if d["name"] == "carol-finance"]
    api.post(f"/desktops/{carols}/poweroff").raise_for_status()
    # the desktop's name is its libvirt domain's on the machine's libvirtd, shared with any other run: made unique
    made = api.post("/pools", json={"name": POOL, "pool_type": "automatic", "template_id": _demo_template(api),
                                    "size": 1, "name_pattern": f"{POOL}-{secrets.token_hex(2)}-#"})
    made.raise_for_status()
    pool = made.json()
    _finish(api, api.post(f"/pools/{pool['id']}/provision").json())
    desktops = api.get("/desktops", params={"per_page": 100}).json()["items"]
    (desktop,) = [d for d in desktops if d["pool_id"] == pool["id"]]
    assert desktop["host_id"] == hosts["vs-a"], desktop
    return pool


def _guest(server: RunningManager, desktop_id: str, command: str, timeout: float = 10.0) -> str:
    """The demo guest agent's reply to `command`, through vs-a's node agent (as the manager's own calls go)."""
    (node,) = [n for n in load_config(server.data_dir) if n.name == "vs-a"]
    with NodeClient(node.url, node.token, timeout=timeout + 5) as client:
        return client.guest(desktop_id, command, timeout=timeout)


def _answers_ping(server: RunningManager, desktop_id: str) -> bool:
    try:
        return _guest(server, desktop_id, "ping", timeout=5) == "pong"
    except Exception:  # noqa: BLE001 (not up yet: no reply, no socket; the caller asks again)
        return False


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


def test_alice_from_active_directory_sees_her_real_desktop_in_the_browser_reboots_logs_off_and_it_is_reset(
        ad, ad_manager, browser, offsite_guard):
    upn = _add_alice(ad)
    pool = _setup_pool(ad_manager)
    api = ad_manager.admin_api
    _finish(api, api.post("/directory/sync", json={"full": True}).json())  # the groups and the entitlement map (portal-users -> pool)

    # real WebSockets for noVNC (see new_guarded_context); one leaving 127.0.0.1 still fails the test
    context = new_guarded_context(browser, offsite_guard, ad_manager.base_url, route_web_sockets=False)
    try:
        page = context.new_page()
        page.goto("/")
        page.get_by_label("Username").fill(upn)
        page.get_by_label("Password").fill(ad["AD_USER_PASSWORD"])  # her password in the directory
        page.get_by_role("button", name="Log in").click()
        expect(page).to_have_url(re.compile(r"/portal$"))
        alice = _user(ad_manager, upn)
        assert (alice["source"], alice["domain"], alice["username"]) == ("ad", "CORP", "alice")

        page.get_by_role("radio", name="In the browser").check()
        page.get_by_role("article", name=POOL).get_by_role("button", name="Connect").click()
        expect(page).to_have_url(re.compile(r"/portal/console/[^/#?]+$"))  # the ticket left the URL
        desktop_id = page.url.rsplit("/", 1)[1]
        expect(page.get_by_role("status").filter(has_text="Connected")).to_be_visible(timeout=30_000)
        expect(page.locator("#screen canvas")).to_be_visible()
        assert_canvas_shows(page, api, desktop_id, "portal-ad-console")
        desktop = api.get(f"/desktops/{desktop_id}").json()
        assert desktop["pool_id"] == pool["id"] and desktop["assigned_user_id"] == alice["id"]
        opened = api.get("/events", params={"code": "console.browser_open", "desktop_id": desktop_id}).json()
        assert [e["user_id"] for e in opened["items"]] == [alice["id"]]

        page.goto("/portal")
        desk = page.get_by_role("article", name=desktop["name"])
        desk.get_by_role("button", name="Reboot").click()
        expect(page.get_by_role("status").filter(has_text="Your desktop is rebooting.")).to_be_visible()
        assert _wait_for_event(ad_manager, "desktop.rebooted", desktop_id)["user_id"] in (None, alice["id"])

        # her work on the desktop, once it is back: a file, synced to its disk
        wait_for(f"the guest agent of {desktop['name']}", lambda: _answers_ping(ad_manager, desktop_id), 300, 2)
        assert _guest(ad_manager, desktop_id, "write /home/user/alice.txt written by alice").startswith("ok")
        assert _guest(ad_manager, desktop_id, "read /home/user/alice.txt") == "written by alice"
        overlay = _overlay(ad_manager, desktop_id)
        assert not qcow2.is_empty(overlay)

        desk.get_by_role("button", name="Log off").click()
        expect(page.get_by_role("status").filter(has_text="You are logged off.")).to_be_visible()
        expect(page.get_by_role("article", name=desktop["name"])).to_have_count(0)  # back to the automatic pool
    finally:
        context.close()

    reset = _wait_for_event(ad_manager, "desktop.reset", desktop_id)
    assert reset["pool_id"] == pool["id"]
    desktop = api.get(f"/desktops/{desktop_id}").json()
    assert desktop["assigned_user_id"] is None and desktop["task_state"] is None
    assert qcow2.is_empty(_overlay(ad_manager, desktop_id))  # a fresh overlay on the template
    api.post(f"/desktops/{desktop_id}/start").raise_for_status()  # and the guest booted from it has no file of hers
    wait_for(f"the guest agent of {desktop['name']}", lambda: _answers_ping(ad_manager, desktop_id), 300, 2)
    assert _guest(ad_manager, desktop_id, "read /home/user/alice.txt") == "ERR no such file: /home/user/alice.txt"
    logoff = api.get("/events", params={"code": "broker.logoff", "desktop_id": desktop_id}).json()["items"]
    assert [e["user_id"] for e in logoff] == [alice["id"]]
