"""The console's actions as each role gets them: toolbars on the search results and on object pages show only what
the role may do (a HelpDesk user sees no Delete; an administrator does), the forms carry what their API calls need,
and a forged request from a page is still checked by the API (a HelpDesk session with a valid CSRF token cannot
delete a desktop)."""
from __future__ import annotations

import re
from dataclasses import dataclass

import pytest

from core.enums import HostStatus, OsType, PoolType, PowerState, Role
from manager import db
from manager.auth import hash_password
from manager.models import (Cluster, Desktop, Host, Pool, RoleAssignment, Snapshot, Template, TemplateVersion, User,
                            Volume)
from tests.integration.web.conftest import form_login, page_csrf

API = "/api/v1"


@dataclass
class Estate:
    host: str
    template: str
    version: str
    pool: str
    manual_pool: str
    desktop: str
    pooled: str
    snapped: str


@pytest.fixture
def estate(admin_browser) -> Estate:
    with db.session_scope() as s:
        cluster = Cluster(name="act-cluster")
        s.add(cluster)
        s.flush()
        host = Host(name="vs-act", cluster_id=cluster.id, status=HostStatus.UP)
        template = Template(name="act-tpl", os_type=OsType.DEBIAN_12)
        s.add_all([host, template])
        s.flush()
        image = Volume(path="/srv/act/tpl.qcow2", role="template")
        s.add(image)
        s.flush()
        version = TemplateVersion(template_id=template.id, number=1, name="gold", volume_id=image.id)
        s.add(version)
        s.flush()
        template.latest_version_id = version.id
        pool = Pool(name="act-pool", pool_type=PoolType.AUTOMATIC, template_id=template.id, size=3, name_pattern="ap-#")
        manual = Pool(name="act-manual", pool_type=PoolType.MANUAL, template_id=template.id, size=1, name_pattern="am-#")
        s.add_all([pool, manual])
        s.flush()
        desktop = Desktop(name="act-desk", host_id=host.id, template_version_id=version.id, power_state=PowerState.UP)
        pooled = Desktop(name="am-1", host_id=host.id, pool_id=manual.id, template_version_id=version.id)
        snapped = Desktop(name="act-snapped", host_id=host.id, template_version_id=version.id)
        s.add_all([desktop, pooled, snapped])
        s.flush()
        layer = Volume(path="/srv/act/snap.qcow2", role="snapshot", desktop_id=snapped.id)
        s.add(layer)
        s.flush()
        s.add(Snapshot(desktop_id=snapped.id, volume_id=layer.id, name="before-upgrade", status="in_preview"))
        for name, role in (("helper", Role.HELP_DESK), ("dadmin", Role.DESKTOP_ADMIN)):
            user = User(username=name, domain="local", upn=f"{name}@local", password_hash=hash_password("pw-for-" + name))
            s.add(user)
            s.flush()
            s.add(RoleAssignment(user_id=user.id, role=role))
        return Estate(host.id, template.id, version.id, pool.id, manual.id, desktop.id, pooled.id, snapped.id)


def _log_in_as(client, name: str) -> None:
    """Log out of the admin's browser session and in as `name` (the bearer token of `client` goes too)."""
    client.headers.pop("Authorization", None)
    client.post("/admin/logout", data={"csrf_token": page_csrf(client.get("/admin").text)})
    response = form_login(client, f"{name}@local", "pw-for-" + name)
    assert response.status_code == 303, response.text


def _buttons(html: str) -> set[str]:
    """The text of every button and button-like link of a page's action toolbars."""
    return {re.sub(r"\s+", " ", b).strip() for b in re.findall(r"<(?:button|a class=\"button\")[^>]*>([^<]*)<", html)}


def _bulk_tools(html: str) -> str:
    found = re.search(r'<div id="bulk-tools".*?</div>', html, re.S)
    return found.group(0) if found else ""


def test_the_bulk_toolbar_shows_each_role_what_it_may_do(client, estate):
    admin = client.get("/admin", params={"q": "Vms: name = act*"})
    assert admin.status_code == 200
    tools = _bulk_tools(admin.text)
    assert 'aria-label="Actions on the selected desktops"' in tools
    assert '<span id="bulk-count" class="bulk-count" aria-live="polite">0 selected</span>' in tools
    every = ["Start", "Shut down", "Power off", "Reboot", "Reset to template", "Re-image…", "Snapshot…", "Revert…",
             "Assign…", "Unassign", "Delete"]
    assert [b for b in every if f">{b}</button>" in tools] == every
    assert tools.count("disabled") == 11  # nothing is selected yet
    assert 'data-select value="' + estate.desktop in admin.text and "actions.js" in admin.text
    # the actions that need more than the desktops ask for it in a dialog, its fields labelled
    for dialog in ("bulk-reimage", "bulk-snapshot", "bulk-revert", "bulk-assign"):
        assert f'<dialog id="{dialog}"' in admin.text
    assert '<label for="bulk-snapshot-name">Snapshot name</label>' in admin.text
    assert '<label for="bulk-assign-user">User</label>' in admin.text and "data-user-picker" in admin.text

    _log_in_as(client, "helper")
    helpdesk = client.get("/admin", params={"q": "Vms: name = act*"})
    tools = _bulk_tools(helpdesk.text)
    assert ">Reboot</button>" in tools and ">Power off</button>" in tools
    assert "Delete" not in tools and "Reset" not in tools
    for other in ("Re-image", "Snapshot", "Revert", "Assign", "Unassign"):  # none of HelpDesk's permissions
        assert other not in tools
    assert 'id="bulk-' not in helpdesk.text.replace('id="bulk-tools"', "").replace('id="bulk-count"', "")


def test_pool_results_offer_a_new_pool_to_whoever_may_create_one(client, estate):
    assert 'href="/admin/pools/new"' in client.get("/admin", params={"q": "Pools:"}).text
    _log_in_as(client, "helper")
    assert "/admin/pools/new" not in client.get("/admin", params={"q": "Pools:"}).text
    refused = client.get("/admin/pools/new")
    assert refused.status_code == 403 and "Not allowed" in refused.text


def test_a_desktop_page_shows_the_admin_every_action_and_helpdesk_no_delete(client, estate):
    page = client.get(f"/admin/desktops/{estate.desktop}")
    assert page.status_code == 200
    buttons = _buttons(page.text)
    assert {"Start", "Shut down", "Power off", "Reboot", "Suspend", "Resume", "Migrate…", "Reset to template",
            "Re-image…", "Edit hardware…", "Take snapshot…", "Attach user…", "Delete…"} <= buttons
    assert re.search(r'data-power="start" disabled>Start<', page.text)  # it runs already
    assert re.search(r'data-power="resume" disabled>Resume<', page.text)  # it is not paused
    assert re.search(r'data-open="dlg-migrate" >Migrate…<', page.text)  # it runs: it can move
    # the migration's targets: the best host, or any other host by name (the API refuses one that cannot take it)
    assert '<option value="">The best host (by the placement policy)</option>' in page.text
    assert 'id="hardware-memory" name="memory_mib" type="number" min="64" max="1048576" required' in page.text
    # deleting a running desktop offers to power it off first (DELETE ?force=true)
    assert 'id="dlg-delete-title">Delete desktop act-desk?<' in page.text and 'name="force"' in page.text
    assert 'aria-labelledby="dlg-reimage-title"' in page.text and 'id="dlg-reimage-title">Re-image act-desk<' in page.text
    assert f'<option value="{estate.version}">Version 1 (gold)</option>' in page.text
    assert 'list="assign-user-options" data-user-picker' in page.text

    _log_in_as(client, "helper")
    page = client.get(f"/admin/desktops/{estate.desktop}")
    buttons = _buttons(page.text)
    assert {"Start", "Shut down", "Power off", "Reboot", "Suspend", "Resume", "Migrate…"} <= buttons
    assert not buttons & {"Delete…", "Reset to template", "Re-image…", "Edit hardware…", "Take snapshot…",
                          "Attach user…"}
    assert "Delete" not in page.text.split('<div class="object-actions">')[1].split("</header>")[0]


def test_a_manual_pools_desktop_is_assigned_through_its_pool_and_a_preview_can_be_kept_or_undone(client, estate):
    pooled = client.get(f"/admin/desktops/{estate.pooled}").text
    assert "Assign user…" in _buttons(pooled) and "Attach user…" not in _buttons(pooled)
    assert f'name="pool_id" value="{estate.manual_pool}"' in pooled and 'name="via" value="pool"' in pooled
    snapped = client.get(f"/admin/desktops/{estate.snapped}").text
    assert {"Snapshots…", "Keep previewed snapshot", "Undo preview"} <= _buttons(snapped)
    _log_in_as(client, "dadmin")  # a DesktopAdmin may write pools and entitlements too
    assert "Assign user…" in _buttons(client.get(f"/admin/desktops/{estate.pooled}").text)


def test_pool_page_resize_and_edit_for_pool_writers_only(client, estate):
    page = client.get(f"/admin/pools/{estate.pool}").text
    assert {"Resize…", "Edit…", "Create missing desktops", "Roll out a version…", "Delete"} <= _buttons(page)
    assert 'id="resize-size" name="size" type="number" min="0" max="100000" required value="3"' in page
    assert 'id="edit-prestarted" name="prestarted" type="number" min="0" max="100000"' in page
    assert "lease_minutes" not in page  # an automatic pool has no lease
    _log_in_as(client, "helper")
    page = client.get(f"/admin/pools/{estate.pool}").text
    assert not _buttons(page) & {"Resize…", "Edit…", "Delete", "Create missing desktops"}


def test_host_page_maintenance_for_host_writers_only(client, estate):
    page = client.get(f"/admin/hosts/{estate.host}").text
    assert "Maintenance…" in _buttons(page) and "Activate" not in _buttons(page)
    assert 'name="drain"' in page and "Move running desktops to other hosts (live migration)" in page
    assert 'id="maintenance-title"' not in page  # up, never drained: no Maintenance card
    refused = client.post(f"{API}/hosts/{estate.host}/maintenance")  # act-desk runs there
    assert refused.status_code == 409 and "act-desk" in refused.json()["detail"]
    csrf = page_csrf(page)
    drained = client.post(f"{API}/hosts/{estate.host}/maintenance", json={"drain": True},
                          headers={"X-CSRF-Token": csrf})
    assert drained.status_code == 200 and drained.json()["drain_job_id"], drained.text
    job = {"id": drained.json()["drain_job_id"]}
    page = client.get(f"/admin/hosts/{estate.host}").text
    assert "Activate" in _buttons(page)
    assert 'id="maintenance-title">Maintenance<' in page and "In maintenance: the host takes no new desktops" in page
    assert f'<a href="/admin/jobs/{job["id"]}">Drain by live migration</a>' in page
    shown = re.search(r'Drain by live migration</a> <span class="state s-(\w+)"', page).group(1)
    if shown in ("pending", "running"):  # an unfinished drain can be cancelled from the page
        assert f'data-cancel-job="{job["id"]}">Cancel drain<' in page
    else:  # it ended already: no other host is up to take act-desk, which the card names
        assert "Cancel drain" not in page and "<li>act-desk: " in page
    _log_in_as(client, "dadmin")  # hosts:write is the SuperUser's
    assert not _buttons(client.get(f"/admin/hosts/{estate.host}").text) & {"Activate", "Maintenance…"}


def test_template_page_import_and_rollout(client, estate):
    page = client.get(f"/admin/templates/{estate.template}").text
    assert {"Import image…", "Roll out to a pool…", "New pool…"} <= _buttons(page)
    assert 'id="import-file" name="file" type="file" required' in page
    assert f'<option value="{estate.pool}">act-pool</option>' in page
    assert f'href="/admin/pools/new?template_id={estate.template}"' in page


def test_the_new_pool_form(client, estate):
    page = client.get("/admin/pools/new", params={"template_id": estate.template})
    assert page.status_code == 200
    text = page.text
    assert f'<option value="{estate.template}" selected>act-tpl</option>' in text
    for label, field in (("Name", "pool-name"), ("Template", "pool-template"), ("Type", "pool-type"),
                         ("Size", "pool-size"), ("Naming pattern", "pool-pattern"), ("Prestarted", "pool-prestarted"),
                         ("Desktops per user", "pool-per-user"), ("Protocol policy", "pool-protocol"),
                         ("Lease (minutes)", "pool-lease")):
        assert f'<label for="{field}">{label}</label>' in text, label
    assert '<option value="time_based">time based</option>' in text


def test_a_forged_delete_from_a_helpdesk_session_is_refused(client, estate):
    """The page shows HelpDesk no Delete; a request made by hand with the session's valid CSRF token is refused
    all the same, and the desktop stays."""
    _log_in_as(client, "helper")
    token = page_csrf(client.get(f"/admin/desktops/{estate.desktop}").text)
    for method, path, body in (("POST", f"{API}/desktops/{estate.desktop}/deprovision", None),
                               ("DELETE", f"{API}/desktops/{estate.desktop}", None),
                               ("POST", f"{API}/desktops/bulk", {"action": "deprovision",
                                                                 "desktop_ids": [estate.desktop]})):
        response = client.request(method, path, json=body, headers={"X-CSRF-Token": token})
        assert response.status_code == 403, (method, path, response.text)
        assert response.json()["error"] == "forbidden"
    without_token = client.post(f"{API}/desktops/{estate.desktop}/reboot")
    assert without_token.status_code == 403 and "CSRF" in without_token.json()["detail"]
    with db.session_scope() as s:
        assert s.get(Desktop, estate.desktop) is not None
