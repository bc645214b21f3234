"""HTTP round-trips for every resource of /api/v1, with the errors: 422 wrong types, 404 unknown ids,
409 duplicates and in-use deletes."""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from manager import db
from manager.models import Desktop

API = "/api/v1"


def make(client, path: str, payload: dict[str, Any]) -> dict[str, Any]:
    response = client.post(f"{API}/{path}", json=payload)
    assert response.status_code == 201, response.text
    return response.json()


def cluster(client, name="c1"):
    return make(client, "clusters", {"name": name})


def template(client, name="tpl"):
    return make(client, "templates", {"name": name, "cpus": 2, "memory_mib": 1024})


def user(client, name="ann"):
    return make(client, "users", {"username": name, "password": "long-enough-pw"})


def pool(client, name="p1"):
    return make(client, "pools", {"name": name, "template_id": template(client, f"t-{name}")["id"], "size": 2})


# resource path -> (payload factory, a field to change and its new value, a wrong-typed payload, unique name key).
# Desktops are here for their wrong types and unknown ids only: creating one places it on a host and defines its
# domain, so their round trip and duplicate names are tested with hosts (tests/integration/broker/test_desktop_*.py).
ROUND_TRIP_ELSEWHERE = {"desktops"}
CASES: dict[str, tuple[Callable, tuple[str, Any] | None, dict[str, Any], str | None]] = {
    "clusters": (lambda c: {"name": "alpha"}, ("description", "changed"), {"name": 5}, "name"),
    "hosts": (lambda c: {"name": "vs-a", "cluster_id": cluster(c)["id"], "agent_url": "http://127.0.0.1:9"},
              ("comment", "rack 4"), {"name": "x", "cluster_id": ["not", "a", "string"]}, "name"),
    "storage-domains": (lambda c: {"name": "nfs1", "path": "/srv/vdi"}, ("description", "fast"),
                        {"name": "x", "path": 12}, "name"),
    "templates": (lambda c: {"name": "win11", "os_type": "windows_11", "cpus": 2, "memory_mib": 4096},
                  ("memory_mib", 8192), {"name": "x", "cpus": "many"}, "name"),
    "desktops": (lambda c: {"name": "desk-1", "cpus": 2, "memory_mib": 2048, "monitors": 2},
                 ("cpus", 4), {"name": "desk", "memory_mib": "lots"}, "name"),
    "pools": (lambda c: {"name": "eng", "template_id": template(c)["id"], "size": 10, "name_pattern": "eng-###"},
              ("comment", "room 4"), {"name": "eng", "template_id": "x", "size": "ten"}, "name"),
    "users": (lambda c: {"username": "jdoe", "first_name": "John", "password": "correct-horse"},
              ("department", "Sales"), {"username": "x", "enabled": "perhaps"}, None),
    "groups": (lambda c: {"name": "finance"}, ("description", "money"), {"name": None}, None),
    "entitlements": (lambda c: {"user_id": user(c)["id"], "pool_id": pool(c)["id"]}, None,
                     {"user_id": 7, "pool_id": 8}, None),
    "role-assignments": (lambda c: {"user_id": user(c)["id"], "role": "HelpDesk"}, None,
                         {"user_id": "x", "role": "Emperor"}, None),
    "tags": (lambda c: {"name": "prod"}, ("description", "production"), {"name": "has space"}, "name"),
    "bookmarks": (lambda c: {"name": "busy", "query": "Vms: cpu_usage > 90"}, ("query", "Vms: status = up"),
                  {"name": "b", "query": 3}, None),
}


@pytest.mark.parametrize("path", sorted(set(CASES) - ROUND_TRIP_ELSEWHERE))
def test_round_trip(client, path):
    factory, change, _bad, _unique = CASES[path]
    created = make(client, path, factory(client))
    item_id = created["id"]

    got = client.get(f"{API}/{path}/{item_id}")
    assert got.status_code == 200 and got.json()["id"] == item_id

    listing = client.get(f"{API}/{path}", params={"per_page": 100}).json()
    assert item_id in [i["id"] for i in listing["items"]]
    assert listing["total"] >= 1 and listing["page"] == 1

    if change is not None:
        field, value = change
        patched = client.patch(f"{API}/{path}/{item_id}", json={field: value})
        assert patched.status_code == 200, patched.text
        assert patched.json()[field] == value
        assert client.get(f"{API}/{path}/{item_id}").json()[field] == value

    deleted = client.delete(f"{API}/{path}/{item_id}")
    assert deleted.status_code == 204, deleted.text
    gone = client.get(f"{API}/{path}/{item_id}")
    assert gone.status_code == 404
    assert gone.json()["error"] == "not_found"


@pytest.mark.parametrize("path", sorted(CASES))
def test_wrong_types_are_422_with_a_message(client, path):
    _factory, _change, bad, _unique = CASES[path]
    response = client.post(f"{API}/{path}", json=bad)
    assert response.status_code == 422, response.text
    body = response.json()
    assert body["error"] == "invalid" and body["detail"]


@pytest.mark.parametrize("path", sorted(CASES))
def test_unknown_ids_are_404(client, path):
    missing = "00000000-0000-0000-0000-000000000000"
    for method in ("get", "delete"):
        response = getattr(client, method)(f"{API}/{path}/{missing}")
        assert response.status_code == 404, (method, response.text)
        assert missing in response.json()["detail"]


@pytest.mark.parametrize("path", sorted(p for p, case in CASES.items() if case[3] and p not in ROUND_TRIP_ELSEWHERE))
def test_duplicate_names_are_409(client, path):
    factory, *_ = CASES[path]
    payload = factory(client)
    make(client, path, payload)
    again = client.post(f"{API}/{path}", json=payload)
    assert again.status_code == 409, again.text
    assert again.json()["error"] == "duplicate"
    assert payload["name"] in again.json()["detail"]


def test_duplicate_user_and_group_within_a_domain_are_409(client):
    user(client, "zed")
    response = client.post(f"{API}/users", json={"username": "zed"})
    assert response.status_code == 409 and "zed@local" in response.json()["detail"]
    assert client.post(f"{API}/users", json={"username": "zed", "domain": "corp"}).status_code == 201
    make(client, "groups", {"name": "g"})
    assert client.post(f"{API}/groups", json={"name": "g"}).status_code == 409


def test_deleting_a_template_that_desktops_use_is_409_naming_them(client):
    tpl = template(client, "xp-base")
    version_id = tpl["latest_version_id"]
    assert version_id, "a new template starts with version 1"
    with db.session_scope() as session:  # records only: no host is needed to be refused
        session.add_all([Desktop(name=name, template_version_id=version_id) for name in ("acct-1", "acct-2")])
    response = client.delete(f"{API}/templates/{tpl['id']}")
    assert response.status_code == 409, response.text
    body = response.json()
    assert body["error"] == "in_use"
    assert "acct-1" in body["detail"] and "acct-2" in body["detail"]
    assert client.get(f"{API}/templates/{tpl['id']}").status_code == 200


def test_unknown_references_are_422_naming_the_field(client):
    response = client.post(f"{API}/hosts", json={"name": "h", "cluster_id": "nope"})
    assert response.status_code == 422
    assert "cluster_id" in response.json()["detail"]


def test_unknown_fields_are_refused(client):
    response = client.post(f"{API}/clusters", json={"name": "c", "colour": "blue"})
    assert response.status_code == 422 and "colour" in response.json()["detail"]


def test_paging_and_sorting(client):
    for i in range(7):
        make(client, "clusters", {"name": f"c{i}"})
    page = client.get(f"{API}/clusters", params={"per_page": 3, "page": 2, "sort": "name", "order": "desc"}).json()
    assert [c["name"] for c in page["items"]] == ["c3", "c2", "c1"]
    assert page["total"] == 7 and page["pages"] == 3
    bad = client.get(f"{API}/clusters", params={"sort": "password_hash"})
    assert bad.status_code == 400 and "sortable" in bad.json()["detail"]
    assert client.get(f"{API}/clusters", params={"page": 0}).status_code == 422


def test_host_token_is_shown_once_and_never_listed(client):
    c = cluster(client)
    created = make(client, "hosts", {"name": "vs-b", "cluster_id": c["id"]})
    assert len(created["agent_token"]) >= 32
    assert "agent_token" not in client.get(f"{API}/hosts/{created['id']}").json()
    assert all("agent_token" not in h for h in client.get(f"{API}/hosts").json()["items"])


def test_user_password_is_hashed_and_never_returned(client):
    created = make(client, "users", {"username": "pw", "password": "sup3r-secret"})
    assert "password" not in created and "password_hash" not in created
    login = client.post(f"{API}/auth/login", json={"username": "pw", "password": "sup3r-secret"})
    assert login.status_code == 200
    assert client.post(f"{API}/auth/login", json={"username": "pw", "password": "wrong"}).status_code == 401


def test_entitlement_needs_exactly_one_principal_and_target(client):
    u = user(client)
    response = client.post(f"{API}/entitlements", json={"user_id": u["id"]})
    assert response.status_code == 422 and "pool_id or desktop_id" in response.json()["detail"]


def test_time_based_pool_needs_a_lease(client):
    tpl = template(client)
    response = client.post(f"{API}/pools", json={"name": "q4", "template_id": tpl["id"], "pool_type": "time_based"})
    assert response.status_code == 422 and "lease_seconds" in response.json()["detail"]


def test_every_change_writes_an_event(client):
    c = cluster(client, "evented")
    client.patch(f"{API}/clusters/{c['id']}", json={"comment": "x"})
    client.delete(f"{API}/clusters/{c['id']}")
    codes = [e["code"] for e in client.get(f"{API}/events", params={"per_page": 50}).json()["items"]]
    assert codes[:3] == ["cluster.deleted", "cluster.updated", "cluster.created"]
    only = client.get(f"{API}/events", params={"code": "cluster.updated"}).json()
    assert only["total"] == 1 and "admin@local" in only["items"][0]["actor"]


def test_calls_without_credentials_are_401(anon_client):
    response = anon_client.get(f"{API}/desktops")
    assert response.status_code == 401 and response.json()["error"] == "not_authenticated"
    assert anon_client.get(f"{API}/desktops", headers={"Authorization": "Bearer nope"}).status_code == 401


def test_a_plain_user_cannot_reach_admin_routes(client, anon_client):
    make(client, "users", {"username": "plain", "password": "plain-password"})
    token = client.post(f"{API}/auth/login", json={"username": "plain", "password": "plain-password"}).json()["token"]
    response = anon_client.get(f"{API}/hosts", headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 403 and response.json()["error"] == "forbidden"


def test_bookmarks_are_private_to_their_owner(client, anon_client):
    mine = make(client, "bookmarks", {"name": "mine", "query": "Vms: name = a*"})
    make(client, "users", {"username": "other", "password": "other-password"})
    token = client.post(f"{API}/auth/login", json={"username": "other", "password": "other-password"}).json()["token"]
    headers = {"Authorization": f"Bearer {token}"}
    assert anon_client.get(f"{API}/bookmarks/{mine['id']}", headers=headers).status_code == 404
    assert anon_client.get(f"{API}/bookmarks", headers=headers).json()["total"] == 0


def test_health_reports_db_redis_and_nodes(anon_client):
    body = anon_client.get(f"{API}/health").json()
    assert body["db"]["status"] == "ok" and body["db"]["backend"] == "postgresql"
    assert body["redis"]["status"] == "not_configured"
    assert "nodes" in body and body["status"] == "ok"
