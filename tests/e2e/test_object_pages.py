"""A desktop's page in the browser: its live screenshot (the node's PNG, refreshed while the page is open), the
Events tab reached with the keyboard, and what the Open console button does with the API's answer."""
from __future__ import annotations

import re
import uuid

import pytest
from playwright.sync_api import expect


@pytest.fixture(scope="module")
def running_desktop(vdi_server) -> dict:
    """A desktop provisioned and started through the API (the demo's own desktops were defined on the test-driver
    hypervisors of `vdi demo`'s node agents, which `vdi serve` started afresh)."""
    api = vdi_server.admin_api
    template = api.get("/templates").json()["items"][0]
    made = api.post("/desktops/provision", json={"name": f"e2e-{uuid.uuid4().hex[:6]}", "template_id": template["id"]})
    assert made.status_code == 201, made.text
    started = api.post(f"/desktops/{made.json()['id']}/start")
    assert started.status_code == 200, started.text
    return started.json()


def test_a_desktop_page_shows_the_live_screen_and_its_events(logged_in, running_desktop):
    page = logged_in("HelpDesk")
    page.goto(f"/admin/desktops/{running_desktop['id']}")
    screen = page.get_by_role("img", name=f"Screen of {running_desktop['name']}")
    expect(screen).to_be_visible()
    page.wait_for_function("img => img.complete && img.naturalWidth > 0", arg=screen.element_handle())
    first = screen.get_attribute("src")
    page.wait_for_function("([img, first]) => img.getAttribute('src') !== first",
                           arg=[screen.element_handle(), first], timeout=20_000)  # refreshed while open

    page.get_by_role("tab", name="Overview").focus()
    page.keyboard.press("ArrowRight")
    events = page.get_by_role("tab", name="Events")
    expect(events).to_have_attribute("aria-selected", "true")
    expect(events).to_be_focused()
    panel = page.get_by_role("tabpanel", name="Events")
    expect(panel.get_by_role("cell", name="desktop.started")).to_be_visible()
    assert re.search(r"[?&]tab=events", page.url)


def test_open_console_offers_the_file_the_api_returned(logged_in, running_desktop):
    page = logged_in("HelpDesk")
    page.goto(f"/admin/desktops/{running_desktop['id']}")
    with page.expect_response(lambda r: f"/api/v1/desktops/{running_desktop['id']}/console?" in r.url) as asked:
        page.get_by_role("button", name="Open console").click()
    if not asked.value.ok:  # a test-driver hypervisor cannot set a console ticket: the page says what the API said
        detail = asked.value.json()["detail"]
        expect(page.get_by_role("status").filter(has_text=f"Could not open the console: {detail}")).to_be_visible()
    # What a working node's console looks like to the page: the file is offered as a download.
    answer = {"session_id": "", "desktop_id": running_desktop["id"], "desktop_name": running_desktop["name"],
              "pool_id": None, "assignment": "admin", "lease_until": None, "protocol": "spice",
              "protocol_reason": "administrator console",
              "console": {"protocol": "spice", "host": "127.0.0.1", "port": 5900, "desktop_id": running_desktop["id"],
                          "desktop_name": running_desktop["name"], "expires_at": None},
              "file": {"name": f"{running_desktop['name']}.vv", "media_type": "application/x-virt-viewer",
                       "content": "[virt-viewer]\ntype=spice\nhost=127.0.0.1\nport=5900\n"}}
    page.route("**/api/v1/desktops/*/console*", lambda route: route.fulfill(json=answer))
    with page.expect_download() as download:
        page.get_by_role("button", name="Open console").click()
    assert download.value.suggested_filename == f"{running_desktop['name']}.vv"
    expect(page.get_by_role("link", name=f"Download {running_desktop['name']}.vv")).to_be_visible()


def test_send_ctrl_alt_del_presses_the_keys_on_the_desktop(logged_in, running_desktop, vdi_server):
    """The button sends the keys through the API to the desktop's node (a test-driver hypervisor takes them like a
    real one; tests/integration/broker/test_send_keys.py shows a real guest rebooting) and the event records it."""
    page = logged_in("HelpDesk")
    page.goto(f"/admin/desktops/{running_desktop['id']}")
    with page.expect_response(lambda r: r.url.endswith(f"/api/v1/desktops/{running_desktop['id']}/send-keys")) as sent:
        page.get_by_role("button", name="Send Ctrl+Alt+Del").click()
    assert sent.value.status == 200, sent.value.text()
    expect(page.get_by_role("status").filter(has_text="Sent ctrl+alt+delete.")).to_be_visible()
    events = vdi_server.admin_api.get("/events", params={"code": "desktop.keys_sent",
                                                         "desktop_id": running_desktop["id"]}).json()["items"]
    assert [e["message"].split(" sent ")[1] for e in events] == [f"ctrl+alt+delete to desktop {running_desktop['name']}"]


def test_disconnect_browser_consoles_says_none_was_open(logged_in, running_desktop):
    page = logged_in("HelpDesk")
    page.goto(f"/admin/desktops/{running_desktop['id']}")
    page.get_by_role("button", name="Disconnect browser consoles").click()
    expect(page.get_by_role("status").filter(has_text="No browser console was open.")).to_be_visible()
