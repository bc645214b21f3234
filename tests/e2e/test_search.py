"""The search bar as a person uses it: log in through the form, type a query key by key with suggestions, run it and
see the API's total, sort and page through the results, save a bookmark and run it again, and read an invalid
query's error under the right character."""
from __future__ import annotations

import re
from urllib.parse import quote

import pytest
from playwright.sync_api import expect

QUERY = "Vms: status = Up and cpu_usage > 50"


@pytest.fixture(scope="module")
def many_desktops(vdi_server):
    """105 desktops named e2e-page-000..104 (records only: enough for two pages of 100)."""
    from sqlalchemy import create_engine
    from sqlalchemy.orm import Session

    from manager.models import Desktop

    names = [f"e2e-page-{i:03d}" for i in range(105)]
    engine = create_engine(vdi_server.database_url)
    try:  # rows only, written straight to the manager's database (POST /desktops provisions on a host)
        with Session(engine) as session, session.begin():
            session.add_all(Desktop(name=name) for name in names)
    finally:
        engine.dispose()
    return names


def test_log_in_through_the_form_and_out_again(page, vdi_server):
    page.goto("/admin?q=" + quote("Hosts:"))
    expect(page).to_have_url(re.compile(r"/admin/login\?next="))
    page.get_by_label("Username").fill(vdi_server.admin.username)
    page.get_by_label("Password").fill("not-" + vdi_server.admin.password)
    page.get_by_role("button", name="Log in").click()
    expect(page.get_by_role("alert")).to_contain_text("user name or password")
    page.get_by_label("Password").fill(vdi_server.admin.password)
    page.get_by_role("button", name="Log in").click()
    expect(page).to_have_url(re.compile(r"/admin\?q=Hosts"))  # back where the person was going
    expect(page.get_by_role("heading", name="Host results")).to_be_visible()
    page.get_by_role("button", name="Log out").click()
    expect(page.get_by_role("button", name="Log in")).to_be_visible()
    page.goto("/admin")
    expect(page).to_have_url(re.compile(r"/admin/login"))


def test_type_a_query_key_by_key_with_suggestions_and_run_it(logged_in, vdi_server):
    page = logged_in()
    page.goto("/admin")
    search = page.get_by_role("combobox", name="Search")
    suggestions = page.get_by_role("listbox", name="Suggestions")
    search.press_sequentially("V", delay=40)
    expect(suggestions.get_by_role("option", name="Vm", exact=True)).to_be_visible()
    search.press_sequentially("ms: st", delay=40)
    expect(suggestions.get_by_role("option", name="status")).to_be_visible()
    search.press_sequentially("atus = u", delay=40)
    for value in ("Unassigned", "Up", "Unknown"):  # the statuses starting with u
        expect(suggestions.get_by_role("option", name=value, exact=True)).to_be_visible()
    search.press("ArrowDown")
    search.press("ArrowDown")  # the keyboard moves to "Up" and Enter picks it
    expect(suggestions.get_by_role("option", name="Up", exact=True)).to_have_attribute("aria-selected", "true")
    search.press("Enter")
    expect(search).to_have_value("Vms: status = Up ")
    search.press_sequentially("and cpu_usage > 50", delay=40)
    expect(search).to_have_value(QUERY)
    search.press("Escape")
    search.press("Enter")
    expect(page).to_have_url(re.compile(r"q=Vms%3A\+status\+%3D\+Up\+and\+cpu_usage\+%3E\+50"))
    api_total = vdi_server.admin_api.get("/search", params={"q": QUERY}).json()["total"]
    expect(page.locator("#result-total")).to_have_attribute("data-total", str(api_total))
    # the same with a query that matches: the demo's desktops that are up
    page.goto("/admin?q=" + quote("Vms: sortby name"))
    api_total = vdi_server.admin_api.get("/search", params={"q": "Vms:"}).json()["total"]
    assert api_total > 0
    expect(page.locator("#result-total")).to_have_attribute("data-total", str(api_total))
    expect(page.get_by_role("columnheader", name="Name")).to_be_visible()


def test_slash_focuses_the_search_bar(logged_in):
    page = logged_in()
    page.goto("/admin/dashboard")
    page.locator("body").click()
    page.keyboard.press("/")
    expect(page.get_by_role("combobox", name="Search")).to_be_focused()


def test_sort_and_page_through_results_with_back_and_forward(logged_in, many_desktops):
    page = logged_in()
    page.goto("/admin?q=" + quote("Vms: name = e2e-page-*"))
    expect(page.locator("#result-total")).to_have_attribute("data-total", "105")
    rows = page.locator("table.results tbody tr")
    expect(rows).to_have_count(100)
    page.get_by_role("link", name="Name", exact=True).click()  # sorted by name, ascending
    expect(page.get_by_role("columnheader", name="Name")).to_have_attribute("aria-sort", "ascending")
    page.get_by_role("link", name="Name", exact=True).click()  # and descending
    expect(page.get_by_role("columnheader", name="Name")).to_have_attribute("aria-sort", "descending")
    expect(rows.first).to_contain_text("e2e-page-104")
    page.get_by_role("link", name="Next page (2)").click()
    expect(rows).to_have_count(5)
    expect(rows.last).to_contain_text("e2e-page-000")
    expect(page.get_by_role("combobox", name="Search")).to_have_value("Vms: name = e2e-page-* sortby name desc page 2")
    page.go_back()
    expect(rows).to_have_count(100)
    page.go_forward()
    expect(rows).to_have_count(5)


def test_save_a_bookmark_and_run_it_again(logged_in, many_desktops):
    page = logged_in()
    page.goto("/admin?q=" + quote("Vms: name = e2e-page-00*"))
    page.get_by_label("Bookmark name").fill("first ten")
    page.get_by_role("button", name="Save bookmark").click()
    bookmarks = page.get_by_role("region", name="Bookmarks")
    expect(bookmarks.get_by_role("link", name="first ten")).to_be_visible()
    page.goto("/admin")
    page.get_by_role("region", name="Bookmarks").get_by_role("link", name="first ten").click()
    expect(page.locator("#result-total")).to_have_attribute("data-total", "10")
    page.get_by_role("button", name="Delete bookmark first ten").click()
    expect(page.get_by_role("region", name="Bookmarks").get_by_role("link", name="first ten")).to_have_count(0)


def test_an_invalid_query_shows_its_error_at_the_right_position(logged_in, vdi_server):
    bad = "Vms: status = running"
    position = vdi_server.admin_api.get("/search", params={"q": bad}).json()["position"]
    page = logged_in()
    page.goto("/admin")
    search = page.get_by_role("combobox", name="Search")
    search.fill(bad)
    search.press("Enter")  # with no suggestion picked, Enter runs the query
    expect(page.get_by_role("heading", name="This search cannot run")).to_be_visible()
    caret = page.get_by_label("Where the problem is").inner_text().split("\n")
    assert caret[0] == bad
    assert caret[1].index("^") == position == bad.index("running")
