"""The search bar's value suggestions and tags on the results, in the browser: typing a host condition offers the
demo's host names (picked with the keyboard); an admin tags a selected desktop with a new tag from the results and
removes it again, the row's Tags cell following in place and the search finding what was tagged; HelpDesk gets no
tag control."""
from __future__ import annotations

import os
import re
from pathlib import Path
from urllib.parse import quote

from playwright.sync_api import expect

SCREENSHOTS = Path(os.environ.get("VDI_E2E_SCREENSHOTS", "/tmp"))


def test_host_names_are_suggested_while_typing(logged_in):
    page = logged_in("SuperUser")
    page.goto("/admin")
    search = page.get_by_role("combobox", name="Search")
    search.press_sequentially("Vms: on_host = v", delay=30)
    suggestions = page.get_by_role("listbox", name="Suggestions")
    expect(suggestions.get_by_role("option", name="vs-a")).to_be_visible()
    expect(suggestions.get_by_role("option", name="vs-b")).to_be_visible()
    search.press("ArrowDown")
    search.press("Enter")
    expect(search).to_have_value("Vms: on_host = vs-a ")


def test_an_admin_tags_a_selected_desktop_from_the_results(logged_in, vdi_server):
    page = logged_in("SuperUser")
    page.goto("/admin?q=" + quote("Vms: sortby name"))
    first = page.locator("table.results tbody tr").first
    name = first.locator("td").nth(1).inner_text().strip()
    tools = page.get_by_role("group", name="Tag the selected desktops")
    add = tools.get_by_role("button", name="Add tag")
    expect(add).to_be_disabled()
    page.get_by_role("checkbox", name=f"Select {name}").check()
    tools.get_by_role("combobox", name="Tag").fill("e2e-vip")  # a new tag: made on the way
    add.click()
    expect(first.get_by_role("link", name="e2e-vip")).to_be_visible()
    page.screenshot(path=str(SCREENSHOTS / "vdi-search-tags.png"))
    found = vdi_server.admin_api.get("/search", params={"q": "Vms: tag = e2e-vip"}).json()
    assert [item["name"] for item in found["items"]] == [name]
    first.get_by_role("link", name="e2e-vip").click()  # the tag's link runs its search
    expect(page).to_have_url(re.compile(r"q=Vms%3A\+tag\+%3D\+e2e-vip"))
    expect(page.locator("#result-total")).to_have_attribute("data-total", "1")

    page.get_by_role("checkbox", name=f"Select {name}").check()
    tools = page.get_by_role("group", name="Tag the selected desktops")
    tools.get_by_role("combobox", name="Tag").fill("e2e-vip")
    tools.get_by_role("button", name="Remove tag").click()
    expect(page.locator("table.results tbody tr").first.get_by_role("link", name="e2e-vip")).to_have_count(0)
    assert vdi_server.admin_api.get("/search", params={"q": "Vms: tag = e2e-vip"}).json()["total"] == 0


def test_helpdesk_has_no_tag_control(logged_in):
    page = logged_in("HelpDesk")
    page.goto("/admin?q=" + quote("Vms:"))
    expect(page.get_by_role("columnheader", name="Tags")).to_be_visible()
    expect(page.locator("#tag-tools")).to_have_count(0)
