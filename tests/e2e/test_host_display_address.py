"""An administrator sets a host's display address (where its guests' consoles listen, what a .vv names) from the
host's page; a malformed one is refused with the API's message."""
from __future__ import annotations

from playwright.sync_api import expect


def test_the_display_address_is_set_from_the_host_page(logged_in, vdi_server):
    api = vdi_server.admin_api
    cluster = api.post("/clusters", json={"name": "e2e-display"})
    cluster.raise_for_status()
    host = api.post("/hosts", json={"name": "e2e-display-host", "cluster_id": cluster.json()["id"],
                                    "address": "10.0.0.5"})
    host.raise_for_status()
    host = host.json()
    page = logged_in()
    page.goto(f"/admin/hosts/{host['id']}")
    expect(page.locator(".fact").filter(has_text="Display address")).to_contain_text("10.0.0.5 (the address)")

    page.get_by_role("button", name="Display address…").click()
    dialog = page.get_by_role("dialog", name=f"Display address of host {host['name']}")
    dialog.get_by_label("Display address").fill("not an address!")
    dialog.get_by_role("button", name="Save").click()
    expect(dialog.get_by_role("alert")).to_contain_text("display_address")
    dialog.get_by_label("Display address").fill("192.0.2.40")
    dialog.get_by_role("button", name="Save").click()
    expect(page.locator(".fact").filter(has_text="Display address")).to_contain_text("192.0.2.40")
    assert api.get(f"/hosts/{host['id']}").json()["display_address"] == "192.0.2.40"
