"""An object page's related lists come through the API's own functions: each list a page shows is what the API
answers for the same object (a group's members, member groups, parents, roles and entitlements; a pool's
entitlements; the users attached to a desktop; a user's own roles), and an object the page names is read as the
API reads it (gone: marked deleted)."""
from __future__ import annotations

import re
import time

import pytest

from core.enums import Role
from event_manager.service import emit
from manager import db
from manager.models import (Assignment, Desktop, Entitlement, Event, Group, GroupGroupMembership, Pool,
                            RoleAssignment, Template, User, UserGroupMembership)

API = "/api/v1"


def section(page: str, title_id: str) -> str:
    found = re.search(rf'aria-labelledby="{title_id}">(.*?)</section>', page, re.S)
    assert found, f"the page has no section {title_id}"
    return found.group(1)


def hrefs(html: str) -> list[str]:
    return re.findall(r'href="(/admin/[^"?#]+)', html)


def api_items(client, path: str, **params) -> list[dict]:
    response = client.get(f"{API}/{path}", params={"per_page": 1000, **params})
    assert response.status_code == 200, response.text
    return response.json()["items"]


@pytest.fixture
def estate(admin_browser) -> dict[str, str]:
    with db.session_scope() as s:
        template = Template(name="tpl-pages")
        s.add(template)
        s.flush()
        pool = Pool(name="pages-pool", template_id=template.id)
        desktop = Desktop(name="pages-desk")
        users = [User(username=n, domain="local", upn=f"{n}@local", display_name=n.title())
                 for n in ("dora", "abe", "cleo", "ben")]
        staff, team, everyone, all_hands = Group(name="staff"), Group(name="team"), Group(name="everyone"), \
            Group(name="all-hands")
        s.add_all([pool, desktop, *users, staff, team, everyone, all_hands])
        s.flush()
        dora, abe, cleo, ben = users
        s.add_all([*(UserGroupMembership(user_id=u.id, group_id=staff.id) for u in (dora, abe, cleo)),
                   UserGroupMembership(user_id=ben.id, group_id=team.id),
                   GroupGroupMembership(parent_id=staff.id, child_id=team.id),
                   GroupGroupMembership(parent_id=everyone.id, child_id=staff.id),
                   GroupGroupMembership(parent_id=all_hands.id, child_id=staff.id),
                   Entitlement(group_id=staff.id, pool_id=pool.id),
                   Entitlement(group_id=staff.id, desktop_id=desktop.id, source="directory"),
                   Entitlement(user_id=ben.id, pool_id=pool.id),
                   Entitlement(user_id=abe.id, pool_id=pool.id),
                   Assignment(desktop_id=desktop.id, user_id=cleo.id, kind="dedicated"),
                   Assignment(desktop_id=desktop.id, user_id=abe.id, kind="dedicated"),
                   RoleAssignment(group_id=staff.id, role=Role.HELP_DESK),
                   RoleAssignment(group_id=staff.id, role=Role.DESKTOP_ADMIN),
                   RoleAssignment(user_id=abe.id, role=Role.DESKTOP_ADMIN)])
        return {"pool": pool.id, "desktop": desktop.id, "staff": staff.id, "abe": abe.id, "cleo": cleo.id}


def test_a_groups_page_lists_what_the_api_answers(admin_browser, client, estate):
    staff = estate["staff"]
    page = admin_browser.get(f"/admin/groups/{staff}").text
    members = api_items(client, f"groups/{staff}/members")
    assert hrefs(section(page, "members-title")) == [f"/admin/users/{u['id']}" for u in members]
    assert [u["username"] for u in members] == ["abe", "cleo", "dora"]  # by name
    nested = client.get(f"{API}/groups/{staff}/members", params={"nested": "true"}).json()["total"]
    assert nested == 4 and "4 users in all" in section(page, "members-title")
    assert hrefs(section(page, "subgroups-title")) == [
        f"/admin/groups/{g['id']}" for g in api_items(client, f"groups/{staff}/subgroups")]
    parents = api_items(client, f"groups/{staff}/parents")
    assert [g["name"] for g in parents] == ["all-hands", "everyone"]
    assert hrefs(section(page, "parents-title")) == [f"/admin/groups/{g['id']}" for g in parents]

    grants = section(page, "grants-title")
    roles = {r["role"] for r in api_items(client, "role-assignments", group_id=staff)}
    assert roles == {"HelpDesk", "DesktopAdmin"}
    assert re.findall(r"<li>(\w+)</li>", grants) == sorted(roles)
    entitled = api_items(client, "entitlements", group_id=staff)
    expected = {f"/admin/pools/{e['pool_id']}" if e["pool_id"] else f"/admin/desktops/{e['desktop_id']}"
                for e in entitled}
    assert set(hrefs(grants)) == expected and len(expected) == 2
    assert hrefs(grants)[0].startswith("/admin/pools/")  # pools first
    assert "from the directory" in grants


def test_a_pools_page_lists_the_entitlements_the_api_answers(admin_browser, client, estate):
    page = admin_browser.get(f"/admin/pools/{estate['pool']}").text
    shown = section(page, "entitlements-title")
    entitled = api_items(client, "entitlements", pool_id=estate["pool"])
    assert len(entitled) == 3 and "(3)" in shown
    assert set(hrefs(shown)) == {f"/admin/users/{e['user_id']}" if e["user_id"] else f"/admin/groups/{e['group_id']}"
                                 for e in entitled}
    assert hrefs(shown)[0] == f"/admin/groups/{estate['staff']}"  # groups first, then users by name
    assert shown.index("abe@local") < shown.index("ben@local")


def test_a_desktops_page_lists_the_users_the_api_says_are_attached(admin_browser, client, estate):
    page = admin_browser.get(f"/admin/desktops/{estate['desktop']}").text
    attached = api_items(client, f"desktops/{estate['desktop']}/users")
    assert {a["user_id"] for a in attached} == {estate["abe"], estate["cleo"]}
    assert hrefs(section(page, "attached-title")) == [f"/admin/users/{estate['abe']}", f"/admin/users/{estate['cleo']}"]


def test_a_users_page_tells_its_own_roles_from_its_groups_as_the_api_does(admin_browser, client, estate):
    own = {r["role"] for r in api_items(client, "role-assignments", user_id=estate["abe"])}
    assert own == {"DesktopAdmin"}
    roles = section(admin_browser.get(f"/admin/users/{estate['abe']}").text, "roles-title")
    items = re.findall(r"<li>(.*?)</li>", roles, re.S)
    assert any("directly" in item for item in items) and any("through a group" in item for item in items)
    cleo = section(admin_browser.get(f"/admin/users/{estate['cleo']}").text, "roles-title")
    assert "directly" not in cleo and "through a group" in cleo


def test_an_object_an_event_names_is_read_as_the_api_reads_it(admin_browser, client, estate):
    with db.session_scope() as s:
        emit(s, "desktop.user_attached", "attached", desktop_id=estate["desktop"], pool_id=estate["pool"])
    with db.session_scope() as s:
        event_id = s.query(Event.id).filter(Event.code == "desktop.user_attached").scalar()
    removal = client.delete(f"{API}/desktops/{estate['desktop']}")  # a job: a record only goes at once
    assert removal.status_code == 202, removal.text
    deadline = time.monotonic() + 60
    while client.get(f"{API}/desktops/{estate['desktop']}").status_code != 404:
        assert time.monotonic() < deadline, client.get(f"{API}/jobs/{removal.json()['id']}").json()
        time.sleep(0.1)
    page = admin_browser.get(f"/admin/events/{event_id}").text
    assert f"desktop {estate['desktop']} (deleted)" in page
    assert f"/admin/pools/{estate['pool']}" in hrefs(page)
