"""The self-service portal as a person uses it: alice logs in through the form at /, lands on the portal, sees her
pool, downloads its connection file with Connect, reboots her desktop and logs off; bob neither sees nor reaches her
desktop. Screenshots at desktop and phone width go to VDI_E2E_SCREENSHOTS (default /tmp)."""
from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
from playwright.sync_api import Page, expect
from sqlalchemy import text

from manager.db import make_engine
from manager.demo import DEMO_PASSWORD
from tests.e2e.browser import new_guarded_context
from tests.e2e.server import Account
from tests.e2e.test_actions import _demo_template, _finish

SCREENSHOTS = Path(os.environ.get("VDI_E2E_SCREENSHOTS", "/tmp"))
POOL = "e2e-portal"
PHONE = {"width": 390, "height": 844}


@pytest.fixture(scope="module")
def portal_pool(vdi_server) -> dict:
    """An automatic pool of 2 desktops (real domains on the demo's test-driver hosts) for alice and bob. Its desktops
    are Windows desktops speaking RDP at an address written into the database as the guest agent would report it: a
    test-driver hypervisor cannot set a SPICE ticket, RDP needs the guest's address and the broker offers RDP for
    Windows only."""
    api = vdi_server.admin_api
    made = api.post("/pools", json={"name": POOL, "pool_type": "automatic", "template_id": _demo_template(api),
                                    "size": 2, "name_pattern": f"{POOL}-#", "description": "portal test desktops"})
    made.raise_for_status()
    pool = made.json()
    _finish(api, api.post(f"/pools/{pool['id']}/provision").json())
    engine = make_engine(vdi_server.database_url)
    with engine.begin() as conn:
        conn.execute(text("UPDATE desktops SET os_type = 'windows_11', console_protocols = 'rdp', ip = '10.99.0.' || right(name, 1) "
                          "WHERE pool_id = :pool"), {"pool": pool["id"]})
    engine.dispose()
    users = {u["username"]: u["id"] for u in api.get("/users", params={"per_page": 100}).json()["items"]}
    for name in ("alice", "bob"):
        api.post("/entitlements", json={"pool_id": pool["id"], "user_id": users[name]}).raise_for_status()
    return pool


def log_in_by_form(page: Page, username: str) -> None:
    page.goto("/")
    page.get_by_label("Username").fill(username)
    page.get_by_label("Password").fill(DEMO_PASSWORD)
    page.get_by_role("button", name="Log in").click()
    expect(page).to_have_url(re.compile(r"/portal$"))


def test_alice_connects_reboots_and_logs_off_from_the_portal(page, portal_pool, vdi_server, browser, offsite_guard):
    log_in_by_form(page, "alice@local")
    expect(page.get_by_role("heading", name="Your desktops")).to_be_visible()
    pool_card = page.get_by_role("article", name=POOL)
    expect(pool_card.get_by_text("Free")).to_be_visible()
    expect(page.get_by_role("radio", name="With the viewer app on this device")).to_be_checked()

    with page.expect_download() as download:
        pool_card.get_by_role("button", name="Connect").click()
    filename = download.value.suggested_filename
    assert re.fullmatch(rf"{POOL}-\d\.rdp", filename), filename
    content = Path(download.value.path()).read_text()
    assert "full address:s:10.99.0." in content
    name = filename.removesuffix(".rdp")
    expect(page.get_by_role("link", name=f"Download {filename}")).to_be_visible()
    desk = page.get_by_role("article", name=name)
    expect(desk.get_by_text("In use")).to_be_visible()
    expect(desk.get_by_text("Reset allowed")).to_be_visible()  # an automatic pool's desktop is disposable
    desktop_id = desk.get_attribute("data-desktop")

    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / "portal-desktop.png"), full_page=True)
    page.set_viewport_size(PHONE)
    assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth"), "the page scrolls sideways"
    page.screenshot(path=str(SCREENSHOTS / "portal-phone.png"), full_page=True)

    desk.get_by_role("button", name="Send Ctrl+Alt+Del").click()
    expect(page.get_by_role("status").filter(has_text="Ctrl+Alt+Del sent to your desktop.")).to_be_visible()
    sent = vdi_server.admin_api.get("/events", params={"code": "desktop.keys_sent", "desktop_id": desktop_id}).json()
    assert [e["message"] for e in sent["items"]] == [f"alice@local sent ctrl+alt+delete to desktop {name}"], sent

    desk.get_by_role("button", name="Reboot").click()
    expect(page.get_by_role("status").filter(has_text="Your desktop is rebooting.")).to_be_visible()
    rebooted = vdi_server.admin_api.get("/events", params={"code": "desktop.rebooted", "desktop_id": desktop_id})
    assert rebooted.json()["total"] >= 1, rebooted.text

    # bob, in a browser of his own, sees the pool but not alice's desktop, and cannot reach it by its id
    bobs = new_guarded_context(browser, offsite_guard, vdi_server.base_url)
    try:
        bob_page = bobs.new_page()
        log_in_by_form(bob_page, "bob@local")
        expect(bob_page.get_by_role("article", name=POOL)).to_be_visible()
        expect(bob_page.get_by_role("article", name=name)).to_have_count(0)
    finally:
        bobs.close()
    bob_api = vdi_server.api(Account("bob@local", DEMO_PASSWORD, "User"))
    for action in ("reboot", "reset", "extend"):
        refused = bob_api.post(f"/me/desktops/{desktop_id}/{action}")
        assert refused.status_code == 404, (action, refused.text)
    refused = bob_api.post(f"/me/desktops/{desktop_id}/send-keys", json={"keys": ["ctrl", "alt", "delete"]})
    assert refused.status_code == 404, refused.text

    desk.get_by_role("button", name="Log off").click()
    expect(page.get_by_role("status").filter(has_text="You are logged off.")).to_be_visible()
    expect(page.get_by_role("article", name=name)).to_have_count(0)  # back to the automatic pool, to be reset


def test_a_user_with_one_desktop_chooses_auto_connect_and_it_is_remembered(portal_pool, vdi_server, browser,
                                                                          offsite_guard):
    solo = vdi_server.create_user("e2e-solo", password="solo-password-1")
    vdi_server.admin_api.post("/entitlements", json={"pool_id": portal_pool["id"], "user_id": solo.user_id}) \
        .raise_for_status()
    held = vdi_server.api(solo).post("/broker/connect", json={"pool_id": portal_pool["id"],
                                                               "client": {"protocols": ["rdp"]}})
    assert held.status_code == 200, held.text

    def visit():
        context = new_guarded_context(browser, offsite_guard, vdi_server.base_url)
        page = context.new_page()
        page.goto("/")
        page.get_by_label("Username").fill("e2e-solo@local")
        page.get_by_label("Password").fill("solo-password-1")
        return context, page

    first, page = visit()
    try:
        page.get_by_role("button", name="Log in").click()
        auto = page.get_by_role("checkbox", name="Connect to my desktop as soon as I open this page")
        expect(auto).not_to_be_checked()
        auto.check()
        expect(page.get_by_role("status").filter(has_text="Saved.")).to_be_visible()
    finally:
        first.close()
    # another browser: the choice came with the account, and the portal connects at once
    second, page = visit()
    try:
        with page.expect_download() as download:
            page.get_by_role("button", name="Log in").click()
        assert download.value.suggested_filename == f"{held.json()['desktop_name']}.rdp"
        expect(page.get_by_role("checkbox", name="Connect to my desktop as soon as I open this page")).to_be_checked()
        expect(page.get_by_role("radio", name="With the viewer app on this device")).to_be_checked()
    finally:
        second.close()
