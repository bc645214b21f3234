"""The browser console as a person uses it: carol logs into the portal, chooses "In the browser", clicks Connect on
her desktop, and noVNC's canvas shows her real guest's screen (compared with the node's screenshot of the same
screen). bob cannot open her console page. The page's controls have their accessible names.

A manager of its own: the package's `vdi_server` runs test-driver hosts only, and this needs a real guest
(carol-finance, booted by `vdi demo --real-guests yes`). Pictures go to VDI_E2E_SCREENSHOTS (default /tmp)."""
from __future__ import annotations

import re

import pytest
from playwright.sync_api import expect

from tests.e2e.browser import assert_canvas_shows, new_guarded_context
from tests.e2e.test_portal import log_in_by_form
from tests.harness.fixtures import real_guest_manager  # noqa: F401 (a fixture)

pytestmark = [pytest.mark.libvirt, pytest.mark.slow]


def test_carol_sees_her_desktop_in_the_browser(real_guest_manager, browser, offsite_guard):
    context = new_guarded_context(browser, offsite_guard, real_guest_manager.base_url, route_web_sockets=False)
    try:
        page = context.new_page()
        log_in_by_form(page, "carol@local")
        page.get_by_role("radio", name="In the browser").check()
        desk = page.get_by_role("article", name="carol-finance")
        desktop_id = desk.get_attribute("data-desktop")
        desk.get_by_role("button", name="Connect").click()

        expect(page).to_have_url(re.compile(rf"/portal/console/{desktop_id}$"))  # the ticket left the URL
        expect(page.get_by_role("status").filter(has_text="Connected")).to_be_visible(timeout=30_000)
        expect(page.get_by_role("button", name="Ctrl+Alt+Del")).to_be_enabled()
        for name in ("Fullscreen", "Clipboard"):
            expect(page.get_by_role("button", name=name)).to_be_visible()
        expect(page.get_by_role("checkbox", name="Scale to window")).to_be_checked()
        canvas = page.locator("#screen canvas")
        expect(canvas).to_be_visible()

        assert_canvas_shows(page, real_guest_manager.admin_api, desktop_id, "browser-console")

        events = real_guest_manager.admin_api.get("/events", params={"desktop_id": desktop_id, "per_page": 50}).json()
        assert any(e["code"] == "console.browser_open" and "carol" in e["message"] for e in events["items"])
    finally:
        context.close()


def test_bob_cannot_open_carols_console_page(real_guest_manager, browser, offsite_guard):
    desktops = real_guest_manager.admin_api.get("/desktops", params={"per_page": 100}).json()["items"]
    (carols,) = [d["id"] for d in desktops if d["name"] == "carol-finance"]
    context = new_guarded_context(browser, offsite_guard, real_guest_manager.base_url)
    try:
        page = context.new_page()
        log_in_by_form(page, "bob@local")
        answer = page.goto(f"/portal/console/{carols}")
        assert answer.status == 404
        answer = page.goto(f"/portal/console/{carols}?admin=1")
        assert answer.status == 404
        expect(page.locator("#screen canvas")).to_have_count(0)
    finally:
        context.close()
