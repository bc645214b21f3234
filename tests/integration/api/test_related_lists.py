"""What the console's object pages show of related objects, asked of the API: the declared exact-match filters of
the CRUD lists (entitlements by pool, desktop, user or group; role assignments by user or group; pools by
template), a group's members (direct or nested), member groups and parent groups, and the users attached to a
desktop. Each under its read permission; an undeclared parameter is a 400 naming the ones there are."""
from __future__ import annotations

from dataclasses import dataclass

import pytest

from core.enums import Role
from manager import db
from tests.harness.tokens import token_for
from manager.models import (Assignment, Desktop, Group, GroupGroupMembership, Pool, RoleAssignment, Template, User,
                            UserGroupMembership)

API = "/api/v1"


@dataclass
class Estate:
    pool: str
    other_pool: str
    template: str
    desktop: str
    ann: str
    bob: str
    cat: str
    staff: str      # ann and bob are members; team is a member group
    team: str       # cat is a member
    everyone: str   # staff is a member


@pytest.fixture
def estate(client) -> Estate:
    with db.session_scope() as s:
        template = Template(name="tpl-rel")
        s.add(template)
        s.flush()
        pool, other_pool = Pool(name="rel-a", template_id=template.id), Pool(name="rel-b", template_id=template.id)
        desktop = Desktop(name="rel-desk")
        ann, bob, cat = (User(username=n, domain="local", upn=f"{n}@local") for n in ("ann", "bob", "cat"))
        staff, team, everyone = Group(name="staff"), Group(name="team"), Group(name="everyone")
        s.add_all([pool, other_pool, desktop, ann, bob, cat, staff, team, everyone])
        s.flush()
        s.add_all([UserGroupMembership(user_id=bob.id, group_id=staff.id),
                   UserGroupMembership(user_id=ann.id, group_id=staff.id),
                   UserGroupMembership(user_id=cat.id, group_id=team.id),
                   GroupGroupMembership(parent_id=staff.id, child_id=team.id),
                   GroupGroupMembership(parent_id=everyone.id, child_id=staff.id),
                   Assignment(desktop_id=desktop.id, user_id=bob.id, kind="dedicated"),
                   Assignment(desktop_id=desktop.id, user_id=ann.id, kind="dedicated"),
                   RoleAssignment(group_id=staff.id, role=Role.HELP_DESK),
                   RoleAssignment(user_id=ann.id, role=Role.DESKTOP_ADMIN)])
        return Estate(pool.id, other_pool.id, template.id, desktop.id, ann.id, bob.id, cat.id, staff.id, team.id,
                      everyone.id)


def ids(response) -> list[str]:
    assert response.status_code == 200, response.text
    return [item["id"] for item in response.json()["items"]]


def entitle(client, **fields) -> str:
    response = client.post(f"{API}/entitlements", json=fields)
    assert response.status_code == 201, response.text
    return response.json()["id"]


def test_entitlements_filter_by_pool_desktop_user_and_group(client, estate):
    e = estate
    staff_a = entitle(client, group_id=e.staff, pool_id=e.pool)
    ann_a = entitle(client, user_id=e.ann, pool_id=e.pool)
    ann_b = entitle(client, user_id=e.ann, pool_id=e.other_pool)
    bob_desk = entitle(client, user_id=e.bob, desktop_id=e.desktop)

    assert sorted(ids(client.get(f"{API}/entitlements", params={"pool_id": e.pool}))) == sorted([staff_a, ann_a])
    assert ids(client.get(f"{API}/entitlements", params={"desktop_id": e.desktop})) == [bob_desk]
    assert sorted(ids(client.get(f"{API}/entitlements", params={"user_id": e.ann}))) == sorted([ann_a, ann_b])
    assert ids(client.get(f"{API}/entitlements", params={"group_id": e.staff})) == [staff_a]
    # filters combine; no filter lists them all
    assert ids(client.get(f"{API}/entitlements", params={"user_id": e.ann, "pool_id": e.other_pool})) == [ann_b]
    assert len(ids(client.get(f"{API}/entitlements"))) == 4
    assert ids(client.get(f"{API}/entitlements", params={"pool_id": "no-such-pool"})) == []


def test_role_assignments_filter_by_user_and_group(client, estate):
    by_group = client.get(f"{API}/role-assignments", params={"group_id": estate.staff}).json()["items"]
    assert [(r["group_id"], r["role"]) for r in by_group] == [(estate.staff, "HelpDesk")]
    by_user = client.get(f"{API}/role-assignments", params={"user_id": estate.ann}).json()["items"]
    assert [(r["user_id"], r["role"]) for r in by_user] == [(estate.ann, "DesktopAdmin")]
    assert client.get(f"{API}/role-assignments", params={"user_id": estate.bob}).json()["total"] == 0


def test_pools_filter_by_template(client, estate):
    listed = client.get(f"{API}/pools", params={"template_id": estate.template}).json()
    assert [p["name"] for p in listed["items"]] == ["rel-a", "rel-b"] and listed["total"] == 2


@pytest.mark.parametrize("path, param", [("entitlements", "role"), ("role-assignments", "pool_id"),
                                         ("users", "username"), ("pools", "name")])
def test_an_undeclared_filter_is_a_400_naming_the_declared_ones(client, estate, path, param):
    response = client.get(f"{API}/{path}", params={param: "x"})
    assert response.status_code == 400, response.text
    detail = response.json()["detail"]
    assert f"has no parameter {param}" in detail and "per_page" in detail


def test_a_filter_value_too_long_is_a_422(client, estate):
    response = client.get(f"{API}/entitlements", params={"pool_id": "x" * 65})
    assert response.status_code == 422 and "pool_id" in response.json()["detail"]


def test_a_groups_members_direct_and_nested_paged_by_user_name(client, estate):
    e = estate
    direct = client.get(f"{API}/groups/{e.staff}/members").json()
    assert [u["username"] for u in direct["items"]] == ["ann", "bob"] and direct["total"] == 2
    nested = client.get(f"{API}/groups/{e.staff}/members", params={"nested": "true"}).json()
    assert [u["username"] for u in nested["items"]] == ["ann", "bob", "cat"]
    # members of members of members: everyone -> staff -> team
    assert client.get(f"{API}/groups/{e.everyone}/members", params={"nested": "true"}).json()["total"] == 3
    assert client.get(f"{API}/groups/{e.everyone}/members").json()["total"] == 0
    second = client.get(f"{API}/groups/{e.staff}/members", params={"nested": "true", "per_page": 2, "page": 2}).json()
    assert [u["username"] for u in second["items"]] == ["cat"] and second["pages"] == 2
    by_name_desc = client.get(f"{API}/groups/{e.staff}/members", params={"sort": "username", "order": "desc"}).json()
    assert [u["username"] for u in by_name_desc["items"]] == ["bob", "ann"]


def test_a_groups_member_groups_and_parent_groups(client, estate):
    e = estate
    assert ids(client.get(f"{API}/groups/{e.staff}/subgroups")) == [e.team]
    assert ids(client.get(f"{API}/groups/{e.staff}/parents")) == [e.everyone]
    assert ids(client.get(f"{API}/groups/{e.team}/parents")) == [e.staff]
    assert ids(client.get(f"{API}/groups/{e.team}/subgroups")) == []


def test_a_cycle_of_groups_ends(client, estate):
    with db.session_scope() as s:  # AD allows cycles: team is a member of staff and now staff of team
        s.add(GroupGroupMembership(parent_id=estate.team, child_id=estate.staff))
    nested = client.get(f"{API}/groups/{estate.team}/members", params={"nested": "true"}).json()
    assert [u["username"] for u in nested["items"]] == ["ann", "bob", "cat"]


@pytest.mark.parametrize("path", ["members", "subgroups", "parents"])
def test_an_unknown_group_is_a_404(client, estate, path):
    response = client.get(f"{API}/groups/no-such-group/{path}")
    assert response.status_code == 404 and response.json()["error"] == "not_found"


def test_the_users_attached_to_a_desktop(client, estate):
    listed = client.get(f"{API}/desktops/{estate.desktop}/users").json()
    assert sorted(a["user_id"] for a in listed["items"]) == sorted([estate.ann, estate.bob])
    assert {a["kind"] for a in listed["items"]} == {"dedicated"} and listed["total"] == 2
    assert client.get(f"{API}/desktops/no-such-desktop/users").status_code == 404


def test_the_lists_need_their_read_permissions(anon_client, client, estate):
    e = estate
    paths = [f"groups/{e.staff}/members", f"groups/{e.staff}/subgroups", f"groups/{e.staff}/parents",
             f"desktops/{e.desktop}/users", f"entitlements?pool_id={e.pool}", f"role-assignments?user_id={e.ann}"]
    helpdesk, plain = token_for(Role.HELP_DESK, "helper"), token_for(None, "plain")
    anon_client.headers.pop("Authorization", None)
    for path in paths:
        assert anon_client.get(f"{API}/{path}", headers=helpdesk).status_code == 200, path
        assert anon_client.get(f"{API}/{path}", headers=plain).status_code == 403, path
        assert anon_client.get(f"{API}/{path}").status_code == 401, path
