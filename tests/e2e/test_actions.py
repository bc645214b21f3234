"""Actions in the browser: select 20 desktops of a search and reboot them as one job that the jobs tray follows to
the end; a destructive action asks first, naming what it affects; a HelpDesk user sees no Delete; a new pool is
created from its form and provisioned; a host goes into maintenance and back from its page. Screenshots of the
toolbar, a confirmation dialog and the pool form go to VDI_E2E_SCREENSHOTS (default /tmp)."""
from __future__ import annotations

import os
import re
import time
from pathlib import Path
from urllib.parse import quote

import pytest
from playwright.sync_api import expect

SCREENSHOTS = Path(os.environ.get("VDI_E2E_SCREENSHOTS", "/tmp"))
BULK = "e2e-bulk"
QUERY = f"Vms: name = {BULK}-* sortby name"


def _finish(api, job: dict, timeout: float = 180.0) -> dict:
    """Wait for a job the test started through the API (not a speed assertion: a generous bound on a loaded
    machine)."""
    deadline = time.monotonic() + timeout
    while True:
        got = api.get(f"/jobs/{job['id']}").json()
        if got["state"] in ("succeeded", "failed", "cancelled"):
            assert got["state"] == "succeeded", got
            return got
        assert time.monotonic() < deadline, f"job {got['description']} still {got['state']}"
        time.sleep(0.5)


def _demo_template(api) -> str:
    """The demo's template (the one the demo pool uses: it has an imported image)."""
    pools = api.get("/pools", params={"per_page": 100}).json()["items"]
    return next(p["template_id"] for p in pools if p["name"] == "eng")


@pytest.fixture(scope="module")
def twenty_running(vdi_server) -> list[dict]:
    """A manual pool of 20 desktops (real domains on the demo's test-driver hosts), all running; 5 of them are
    assigned to demo users."""
    api = vdi_server.admin_api
    pool = api.post("/pools", json={"name": BULK, "pool_type": "manual", "template_id": _demo_template(api), "size": 20,
                                    "max_desktops_per_user": 5, "name_pattern": f"{BULK}-##"})
    pool.raise_for_status()
    pool = pool.json()
    _finish(api, api.post(f"/pools/{pool['id']}/provision").json())
    desktops = api.get("/search", params={"q": QUERY, "page_size": 100}).json()["items"]
    assert len(desktops) == 20
    _finish(api, api.post("/desktops/bulk", json={"action": "start", "desktop_ids": [d["id"] for d in desktops]}).json())
    alice = api.get("/search", params={"q": "Users: usrname = alice"}).json()["items"][0]
    for desktop in desktops[:5]:
        api.post(f"/pools/{pool['id']}/desktops/{desktop['id']}/assign", json={"user_id": alice["id"]}).raise_for_status()
    return desktops


def test_select_20_desktops_and_reboot_them_as_one_job(logged_in, vdi_server, twenty_running):
    page = logged_in()
    page.goto("/admin?q=" + quote(QUERY))
    expect(page.locator("#result-total")).to_contain_text("20 matches")
    tools = page.get_by_role("group", name="Actions on the selected desktops")
    reboot = tools.get_by_role("button", name="Reboot")
    expect(reboot).to_be_disabled()
    expect(tools).to_contain_text("0 selected")

    page.get_by_role("checkbox", name=f"Select {BULK}-01").check()
    page.get_by_role("checkbox", name=f"Select {BULK}-20").click(modifiers=["Shift"])  # the range in between
    expect(tools).to_contain_text("20 selected")
    expect(page.get_by_role("checkbox", name="Select all on this page")).to_be_checked()
    expect(reboot).to_be_enabled()
    tools.screenshot(path=str(SCREENSHOTS / "console-bulk-toolbar.png"))
    page.screenshot(path=str(SCREENSHOTS / "console-bulk-selected.png"))

    reboot.click()
    # 5 of them are held by a user: rebooting those ends their sessions, so the console asks first
    dialog = page.get_by_role("alertdialog", name="Reboot 20 desktops?")
    expect(dialog).to_be_visible()
    expect(dialog).to_contain_text("Reboot 20 desktops; 5 have users logged in.")
    expect(dialog).to_contain_text(f"In use: {BULK}-01, {BULK}-02, {BULK}-03, {BULK}-04, {BULK}-05.")
    expect(dialog.get_by_role("listitem")).to_have_count(20)
    page.screenshot(path=str(SCREENSHOTS / "console-bulk-confirm.png"))
    dialog.get_by_role("button", name="Reboot").click()

    tray = page.get_by_role("dialog", name="Jobs")
    expect(tray).to_be_visible()  # the tray opens to follow the job
    item = tray.get_by_role("listitem").filter(has=page.get_by_role("link", name="reboot 20 desktop(s)"))
    expect(item).to_have_count(1)
    expect(item).to_contain_text("succeeded", timeout=120_000)
    expect(item).to_contain_text("20/20")
    page.screenshot(path=str(SCREENSHOTS / "console-bulk-done.png"))
    expect(tools).to_contain_text("0 selected")  # the results came back fresh, nothing selected
    expect(page.get_by_role("checkbox", name=f"Select {BULK}-01")).not_to_be_checked()

    api = vdi_server.admin_api
    jobs = api.get("/jobs", params={"kind": "desktops.bulk", "per_page": 100}).json()["items"]
    job = next(j for j in jobs if j["description"] == "reboot 20 desktop(s)")
    assert (job["state"], job["done"], job["total"], job["result"]["failed"]) == ("succeeded", 20, 20, {})
    assert job["created_by"] == vdi_server.admin.username


def test_a_destructive_action_asks_first_and_cancel_does_nothing(logged_in, vdi_server, twenty_running):
    page = logged_in()
    page.goto("/admin?q=" + quote(QUERY))
    page.get_by_role("checkbox", name="Select all on this page").check()
    tools = page.get_by_role("group", name="Actions on the selected desktops")
    expect(tools).to_contain_text("20 selected")
    before = vdi_server.admin_api.get("/jobs", params={"kind": "desktops.bulk"}).json()["total"]
    tools.get_by_role("button", name="Reset to template").click()
    dialog = page.get_by_role("alertdialog", name="Reset 20 desktops?")
    expect(dialog).to_contain_text("Reset 20 desktops; 5 have users logged in.")
    expect(dialog).to_contain_text("everything changed on it is lost")
    expect(dialog.get_by_role("button", name="Cancel")).to_be_focused()  # the safe choice is the default
    page.keyboard.press("Escape")
    expect(dialog).to_have_count(0)
    assert vdi_server.admin_api.get("/jobs", params={"kind": "desktops.bulk"}).json()["total"] == before
    expect(tools).to_contain_text("20 selected")  # the selection stays for another try


def test_helpdesk_sees_no_delete(logged_in, twenty_running):
    page = logged_in("HelpDesk")
    page.goto("/admin?q=" + quote(QUERY))
    tools = page.get_by_role("group", name="Actions on the selected desktops")
    expect(tools.get_by_role("button", name="Reboot")).to_be_visible()
    expect(tools.get_by_role("button", name="Delete")).to_have_count(0)
    expect(tools.get_by_role("button", name="Reset to template")).to_have_count(0)
    for name in ("Re-image…", "Snapshot…", "Revert…", "Assign…", "Unassign"):  # none of its permissions
        expect(tools.get_by_role("button", name=name)).to_have_count(0)
    page.get_by_role("link", name=f"{BULK}-07").click()
    expect(page.get_by_role("heading", name=f"{BULK}-07", level=1)).to_be_visible()
    expect(page.get_by_role("button", name="Shut down")).to_be_visible()
    expect(page.get_by_role("button", name="Delete")).to_have_count(0)
    # What a forged request from this HelpDesk session gets, with the page's own CSRF token: refused, and the
    # desktop stays.
    desktop_id = page.locator("[data-kind=desktop]").get_attribute("data-id")
    forged = page.evaluate("""async (id) => {
        const csrf = document.querySelector('meta[name="csrf-token"]').content;
        const answer = await fetch(`/api/v1/desktops/${id}`, {method: "DELETE", headers: {"X-CSRF-Token": csrf}});
        return [answer.status, (await answer.json()).error];
    }""", desktop_id)
    assert forged == [403, "forbidden"]
    page.reload()
    expect(page.get_by_role("heading", name=f"{BULK}-07", level=1)).to_be_visible()


def test_create_a_pool_from_its_form_and_watch_it_provision(logged_in, vdi_server):
    page = logged_in()
    page.goto("/admin?q=" + quote("Pools:"))
    page.get_by_role("link", name="New pool").click()
    expect(page.get_by_role("heading", name="New pool")).to_be_visible()
    page.get_by_label("Name", exact=True).fill("e2e-form")
    page.get_by_label("Type").select_option("time_based")
    expect(page.get_by_label("Lease (minutes)", exact=True)).to_be_visible()  # lending fields: time-based pools
    page.get_by_label("Size").fill("3")
    page.get_by_label("Prestarted").fill("5")
    page.get_by_label("Naming pattern").fill("e2e-form-#")
    page.get_by_label("Lease (minutes)", exact=True).fill("90")
    page.get_by_label("Longest lease (minutes)").fill("180")
    page.get_by_label("Then").select_option(label="Log the user off")
    page.get_by_label("After (minutes)").fill("15")
    page.screenshot(path=str(SCREENSHOTS / "console-pool-form.png"), full_page=True)
    page.get_by_role("button", name="Create pool").click()
    expect(page.get_by_role("alert")).to_contain_text("prestarted (5) cannot exceed size (3)")  # the API's word
    page.get_by_label("Prestarted").fill("1")
    page.get_by_role("button", name="Create pool").click()

    expect(page.get_by_role("heading", name="e2e-form", level=1)).to_be_visible()
    expect(page).not_to_have_url(re.compile(r"watch="))
    tray = page.get_by_role("dialog", name="Jobs")
    item = tray.get_by_role("listitem").filter(has=page.get_by_role("link", name="provision pool e2e-form"))
    expect(item).to_contain_text("succeeded", timeout=120_000)
    pool = next(p for p in vdi_server.admin_api.get("/pools", params={"per_page": 100}).json()["items"]
                if p["name"] == "e2e-form")
    assert (pool["pool_type"], pool["size"], pool["prestarted"], pool["lease_seconds"]) == ("time_based", 3, 1, 5400)
    assert (pool["max_lease_seconds"], pool["disconnect_action"], pool["disconnect_after_minutes"]) == \
        (10800, "logoff", 15)
    expect(page.locator(".fact").filter(has_text="When a user disconnects")).to_contain_text("log the user off after 15")

    # the pool's page: edit a setting (PATCH) and see it
    page.get_by_role("button", name="Edit…").click()
    dialog = page.get_by_role("dialog", name="Edit pool e2e-form")
    dialog.get_by_label("Desktops per user").fill("2")
    dialog.get_by_role("button", name="Save").click()
    expect(page.locator(".facts")).to_contain_text("Desktops per user")
    expect(page.locator(".fact").filter(has_text="Desktops per user")).to_contain_text("2")
    events = vdi_server.admin_api.get("/events", params={"code": "pool.updated", "pool_id": pool["id"]}).json()
    assert events["total"] == 1 and events["items"][0]["message"].endswith("max_desktops_per_user")

    # the longest lease and the disconnect policy change the same way
    page.get_by_role("button", name="Edit…").click()
    dialog.get_by_label("Longest lease (minutes; empty: leases cannot be extended)").fill("240")
    dialog.get_by_label("When a user disconnects").select_option(label="Reset the desktop to its template")
    dialog.get_by_label("After (minutes disconnected)").fill("0")
    dialog.get_by_role("button", name="Save").click()
    expect(page.locator(".fact").filter(has_text="When a user disconnects")).to_contain_text("reset the desktop to "
                                                                                             "its template at once")
    pool = vdi_server.admin_api.get(f"/pools/{pool['id']}").json()
    assert (pool["max_lease_seconds"], pool["disconnect_action"], pool["disconnect_after_minutes"]) == \
        (14400, "reset", 0)

    # recurring opening hours in a time zone, typed one window a line; a wrong time is the API's 422, said in place
    page.get_by_role("button", name="Edit…").click()
    hours = dialog.get_by_label("Opening hours (one window a line, e.g. mon-fri 08:00-18:00; empty: always open)")
    hours.fill("mon-fri 08:00-18:00\nsat 22:00-25:00")
    dialog.get_by_label("Time zone of the opening hours").fill("Europe/Paris")
    dialog.get_by_role("button", name="Save").click()
    expect(dialog.get_by_role("alert")).to_contain_text("end")
    hours.fill("mon-fri 08:00-18:00\nsat 22:00-02:00")
    dialog.get_by_label("Naming pattern (new desktops)").fill("e2e-new-##")
    page.screenshot(path=str(SCREENSHOTS / "console-pool-edit.png"), full_page=True)
    dialog.get_by_role("button", name="Save").click()
    opening = page.locator(".fact").filter(has_text="Opening hours")
    expect(opening).to_contain_text("mon-fri 08:00-18:00")
    expect(opening).to_contain_text("sat 22:00-02:00")
    expect(opening).to_contain_text("Europe/Paris")
    page.screenshot(path=str(SCREENSHOTS / "console-pool-hours.png"), full_page=True)
    pool = vdi_server.admin_api.get(f"/pools/{pool['id']}").json()
    assert pool["schedule"] == [{"days": ["mon", "tue", "wed", "thu", "fri"], "start": "08:00", "end": "18:00"},
                                {"days": ["sat"], "start": "22:00", "end": "02:00"}]
    assert (pool["time_zone"], pool["name_pattern"]) == ("Europe/Paris", "e2e-new-##")


def test_a_host_goes_into_maintenance_and_back_from_its_page(logged_in, vdi_server, twenty_running):
    api = vdi_server.admin_api
    running = api.get("/hosts/" + twenty_running[0]["host_id"]).json()
    spare = api.post("/hosts", json={"name": "e2e-spare", "cluster_id": running["cluster_id"]})
    spare.raise_for_status()
    spare = spare.json()  # no node agent: never sent a heartbeat
    page = logged_in()

    page.goto(f"/admin/hosts/{running['id']}")
    page.get_by_role("button", name="Maintenance…").click()
    dialog = page.get_by_role("dialog", name=f"Put host {running['name']} into maintenance")
    dialog.get_by_role("button", name="Start maintenance").click()
    expect(dialog.get_by_role("alert")).to_contain_text("shut them down first")  # refused, naming the desktops
    expect(dialog.get_by_role("alert")).to_contain_text(f"{BULK}-")
    dialog.get_by_role("button", name="Cancel").click()
    expect(dialog).to_be_hidden()

    page.goto(f"/admin/hosts/{spare['id']}")
    page.get_by_role("button", name="Maintenance…").click()
    dialog = page.get_by_role("dialog", name=f"Put host {spare['name']} into maintenance")
    dialog.get_by_label("Reason (recorded in the event)").fill("e2e: new RAM")
    dialog.get_by_role("button", name="Start maintenance").click()
    activate = page.get_by_role("button", name="Activate")
    expect(activate).to_be_visible()
    expect(page.locator(".object-head .state")).to_have_text("maintenance")
    activate.click()
    expect(page.get_by_role("button", name="Maintenance…")).to_be_visible()
    expect(page.locator(".object-head .state")).to_have_text("non responsive")  # until its agent sends a heartbeat
    events = api.get("/events", params={"host_id": spare["id"], "per_page": 10}).json()["items"]
    assert [e["code"] for e in events][:2] == ["host.activated", "host.maintenance"]
    assert events[1]["message"].endswith("e2e: new RAM")


def test_assign_a_desktop_to_a_user_found_by_name(logged_in, vdi_server, twenty_running):
    desktop = twenty_running[5]  # a manual pool's desktop nobody holds
    page = logged_in()
    page.goto(f"/admin/desktops/{desktop['id']}")
    toolbar = page.locator(".object-actions")
    expect(toolbar.get_by_role("button", name="Delete")).to_be_visible()
    toolbar.screenshot(path=str(SCREENSHOTS / "console-desktop-toolbar.png"))
    toolbar.get_by_role("button", name="Assign user…").click()
    dialog = page.get_by_role("dialog", name=f"Assign {desktop['name']} to a user")
    user = dialog.get_by_role("combobox", name="User")
    user.press_sequentially("bo", delay=60)
    expect(dialog.locator("#assign-user-options option[value='bob@local']")).to_have_count(1)  # found by search
    user.fill("bob@local")
    page.screenshot(path=str(SCREENSHOTS / "console-assign-dialog.png"))
    dialog.get_by_role("button", name="Assign").click()
    expect(page.locator(".fact").filter(has_text="Assigned user")).to_contain_text("bob@local")
    expect(toolbar.get_by_role("button", name="Unassign user")).to_be_visible()
    expect(toolbar.get_by_role("button", name="Assign user…")).to_have_count(0)

    toolbar.get_by_role("button", name="Unassign user").click()
    confirm = page.get_by_role("alertdialog", name=f"Unassign {desktop['name']}?")
    confirm.get_by_role("button", name="Unassign").click()
    expect(page.locator(".fact").filter(has_text="Assigned user")).to_contain_text("—")
    assert vdi_server.admin_api.get(f"/desktops/{desktop['id']}").json()["assigned_user_id"] is None


SNAP = "e2e-snap"


def test_snapshot_three_selected_desktops_as_one_job(logged_in, vdi_server):
    api = vdi_server.admin_api
    pool = api.post("/pools", json={"name": SNAP, "pool_type": "manual", "template_id": _demo_template(api), "size": 3,
                                    "name_pattern": f"{SNAP}-#"})
    pool.raise_for_status()
    _finish(api, api.post(f"/pools/{pool.json()['id']}/provision").json())
    query = f"Vms: name = {SNAP}-* sortby name"
    page = logged_in()
    page.goto("/admin?q=" + quote(query))
    expect(page.locator("#result-total")).to_contain_text("3 matches")
    page.get_by_role("checkbox", name="Select all on this page").check()
    tools = page.get_by_role("group", name="Actions on the selected desktops")
    expect(tools).to_contain_text("3 selected")

    tools.get_by_role("button", name="Snapshot…").click()
    form = page.get_by_role("dialog", name="Snapshot the selected desktops")
    form.get_by_role("button", name="Next").click()  # no name: the browser asks for it, nothing is sent
    expect(form).to_be_visible()
    form.get_by_label("Snapshot name").fill("a/b")
    form.get_by_role("button", name="Next").click()
    expect(form.get_by_role("alert")).to_contain_text("snapshot_name")  # the API's 422, shown in the dialog
    form.get_by_label("Snapshot name").fill("before-update")
    form.get_by_role("button", name="Next").click()

    confirm = page.get_by_role("alertdialog", name="Snapshot 3 desktops named before-update?")
    expect(confirm).to_contain_text("Snapshot 3 desktops named before-update.")
    expect(confirm.get_by_role("listitem")).to_have_count(3)
    page.screenshot(path=str(SCREENSHOTS / "console-bulk-snapshot-confirm.png"))
    confirm.get_by_role("button", name="Snapshot").click()

    tray = page.get_by_role("dialog", name="Jobs")
    job_link = page.get_by_role("link", name="snapshot (before-update) 3 desktop(s)")
    item = tray.get_by_role("listitem").filter(has=job_link)
    expect(item).to_have_count(1)
    expect(item).to_contain_text("succeeded", timeout=120_000)
    expect(item).to_contain_text("3/3")
    desktops = api.get("/search", params={"q": query}).json()["items"]
    for desktop in desktops:
        names = [s["name"] for s in api.get(f"/desktops/{desktop['id']}/snapshots").json()]
        assert names == ["before-update"], (desktop["name"], names)

    # the same three to one user found by name: the pool lets a user hold one, so two fail, named in a notice
    page.get_by_role("button", name="Jobs", exact=True).click()  # the tray closes (it covers the toolbar)
    expect(tray).to_be_hidden()
    page.get_by_role("checkbox", name="Select all on this page").check()
    tools.get_by_role("button", name="Assign…").click()
    form = page.get_by_role("dialog", name="Assign the selected desktops to a user")
    user = form.get_by_role("combobox", name="User")
    user.press_sequentially("bo", delay=60)
    expect(form.locator("#bulk-assign-user-options option[value='bob@local']")).to_have_count(1)  # found by search
    user.fill("bob@local")
    form.get_by_role("button", name="Next").click()
    confirm = page.get_by_role("alertdialog", name="Assign 3 desktops to bob@local?")
    confirm.get_by_role("button", name="Assign").click()
    item = tray.get_by_role("listitem").filter(has=page.get_by_role("link", name="assign 3 desktop(s)"))
    expect(item).to_contain_text("succeeded", timeout=120_000)
    expect(page.get_by_role("status")).to_contain_text("Assign: 2 desktops failed")
    expect(page.get_by_role("status")).to_contain_text("the limit is 1")
    bob = api.get("/search", params={"q": "Users: usrname = bob"}).json()["items"][0]
    held = [d for d in api.get("/search", params={"q": query}).json()["items"] if d["assigned_user_id"] == bob["id"]]
    assert len(held) == 1
