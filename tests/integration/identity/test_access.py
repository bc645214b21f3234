"""GET /api/v1/users/{id}/access on the synced directory: pools and desktops a user reaches and by which path
(direct entitlement, the nested group chain, an assignment), ?pool= explaining why not, and who may ask."""
from __future__ import annotations

import datetime as dt

import pytest
from sqlalchemy import select

from core.enums import PoolType, PrincipalSource
from manager import db
from manager.identity.directory import Directory
from manager.identity.sync import sync_directory
from manager.models import Assignment, Desktop, Entitlement, Group, Pool, Template, User, utcnow
from tests.integration.identity.test_login import API, login


@pytest.fixture
def synced(clean_db, ad, ad_settings):
    """The seeded directory synced, pool `office` entitled to vdi-users by the mapping, `lab` to user013
    directly, a time-based pool `night` entitled to eng-all but closed, `empty` to vdi-users with size 0."""
    with db.session_scope() as session:
        template = Template(name="tpl")
        session.add(template)
        session.flush()
        closed_at = utcnow() - dt.timedelta(hours=1)
        session.add_all([Pool(name="office", template_id=template.id, size=5),
                         Pool(name="lab", template_id=template.id, size=2),
                         Pool(name="night", template_id=template.id, size=2, pool_type=PoolType.TIME_BASED,
                              window_start=closed_at - dt.timedelta(hours=8), window_end=closed_at),
                         Pool(name="empty", template_id=template.id, size=0),
                         Desktop(name="kiosk-1")])
    with db.session_scope() as session:
        sync_directory(session, Directory(ad_settings), full=True)
    with db.session_scope() as session:
        pools = {p.name: p.id for p in session.scalars(select(Pool))}
        groups = {g.name: g.id for g in session.scalars(select(Group).where(Group.source == PrincipalSource.AD))}
        users = {u.username: u.id for u in session.scalars(select(User).where(User.source == PrincipalSource.AD))}
        kiosk = session.scalar(select(Desktop.id).where(Desktop.name == "kiosk-1"))
        session.add_all([Entitlement(user_id=users["user013"], pool_id=pools["lab"]),
                         Entitlement(group_id=groups["eng-all"], pool_id=pools["night"]),
                         Entitlement(group_id=groups["vdi-users"], pool_id=pools["empty"]),
                         Assignment(desktop_id=kiosk, user_id=users["user013"])])
    return {"pools": pools, "groups": groups, "users": users, "kiosk": kiosk}


def test_access_lists_paths_through_nested_groups(synced, client):
    users = synced["users"]
    response = client.get(f"{API}/users/{users['user011']}/access")
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["active"] is True and body["blocked_by"] == []
    assert {p["name"] for p in body["pools"]} == {"office", "night", "empty"}
    office = next(p for p in body["pools"] if p["name"] == "office")
    assert office["paths"] == [{"via": "group", "group": "vdi-users",
                                "chain": ["user011", "eng-backend", "eng-all", "vdi-users"],
                                "entitlement_id": office["paths"][0]["entitlement_id"], "source": "directory"}]
    night = next(p for p in body["pools"] if p["name"] == "night")
    assert night["paths"][0]["chain"] == ["user011", "eng-backend", "eng-all"]
    chains = {g["name"]: g["chain"] for g in body["groups"]}
    assert chains["vdi-users"] == ["user011", "eng-backend", "eng-all", "vdi-users"]
    assert chains["all-staff-dl"] == ["user011", "eng-backend", "eng-all", "vdi-users", "all-staff-dl"]
    assert body["desktops"] == []


def test_direct_entitlement_and_assignment_paths(synced, client):
    body = client.get(f"{API}/users/{synced['users']['user013']}/access").json()
    lab = next(p for p in body["pools"] if p["name"] == "lab")
    assert [p["via"] for p in lab["paths"]] == ["direct entitlement"]
    assert body["desktops"] == [{"id": synced["kiosk"], "name": "kiosk-1",
                                 "paths": [{"via": "assignment", "kind": "dedicated", "until": None}]}]


def test_cycle_in_groups_terminates_with_shortest_chains(synced, client):
    body = client.get(f"{API}/users/{synced['users']['user001']}/access").json()
    chains = {g["name"]: g["chain"] for g in body["groups"]}
    assert chains["loop-a"] == ["user001", "loop-a"]
    assert chains["loop-b"] == ["user001", "loop-a", "loop-b"]
    assert chains["vdi-admins"] == ["user001", "vdi-admins"]


def test_why_not_explains_each_reason(synced, client):
    users, pools = synced["users"], synced["pools"]
    ok = client.get(f"{API}/users/{users['user011']}/access", params={"pool": "office"}).json()["pool"]
    assert ok["allowed"] is True and ok["reasons"] == [] and ok["paths"][0]["group"] == "vdi-users"

    # by id as well as by name; a sales user is not in eng-all: no entitlement, and the window is closed
    night = client.get(f"{API}/users/{users['user151']}/access", params={"pool": pools["night"]}).json()["pool"]
    assert night["allowed"] is False
    assert night["reasons"][0].startswith("no entitlement: neither user151 nor any of their 3 group(s) "
                                          "(all-staff-dl, sales-all, vdi-users) is entitled to pool night")
    assert night["reasons"][1].startswith("pool night closed at")

    empty = client.get(f"{API}/users/{users['user011']}/access", params={"pool": "empty"}).json()["pool"]
    assert empty["allowed"] is False and empty["reasons"] == ["pool empty has no desktops (size 0)"]

    disabled = client.get(f"{API}/users/{users['user020']}/access", params={"pool": "office"}).json()
    assert disabled["pool"]["allowed"] is False
    assert disabled["pool"]["reasons"] == ["the account is disabled in the directory"]
    assert disabled["pool"]["paths"][0]["chain"] == ["user020", "eng-frontend", "eng-all", "vdi-users"]

    missing = client.get(f"{API}/users/{users['user011']}/access", params={"pool": "no-such-pool"})
    assert missing.status_code == 404 and "no-such-pool" in missing.json()["detail"]
    assert client.get(f"{API}/users/not-a-user/access").status_code == 404


def test_a_user_may_ask_about_themselves_only(synced, ad, ad_env, anon_client):
    token = login(anon_client, "user151", ad["AD_USER_PASSWORD"]).json()["token"]
    headers = {"Authorization": f"Bearer {token}"}
    own = anon_client.get(f"{API}/users/me/access", headers=headers)
    assert own.status_code == 200 and own.json()["user"]["username"] == "user151"
    assert {p["name"] for p in own.json()["pools"]} == {"office", "empty"}
    by_id = anon_client.get(f"{API}/users/{synced['users']['user151']}/access", headers=headers)
    assert by_id.status_code == 200
    other = anon_client.get(f"{API}/users/{synced['users']['user011']}/access", headers=headers)
    assert other.status_code == 403

    helpdesk = login(anon_client, "user011", ad["AD_USER_PASSWORD"]).json()["token"]  # eng-all -> HelpDesk
    seen = anon_client.get(f"{API}/users/{synced['users']['user151']}/access",
                           headers={"Authorization": f"Bearer {helpdesk}"})
    assert seen.status_code == 200
