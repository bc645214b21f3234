"""PATCH /pools/{id}: the fields that are safe to change after creation, checked against the pool as it would be
afterwards, with an event; the fields that shape existing desktops are refused."""
from __future__ import annotations

API = "/api/v1"


def _pool(client, **fields):
    template = client.post(f"{API}/templates", json={"name": f"tpl-{fields.get('name', 'p')}"}).json()
    body = {"name": "p", "template_id": template["id"], "size": 4, "name_pattern": "p-##", **fields}
    response = client.post(f"{API}/pools", json=body)
    assert response.status_code == 201, response.text
    return response.json()


def test_safe_fields_change_with_an_event(client):
    pool = _pool(client)
    response = client.patch(f"{API}/pools/{pool['id']}", json={
        "description": "engineering", "comment": "room 4", "max_desktops_per_user": 2,
        "protocol_policy": "prefer_rdp", "prestarted": 3})
    assert response.status_code == 200, response.text
    got = client.get(f"{API}/pools/{pool['id']}").json()
    assert (got["description"], got["comment"], got["max_desktops_per_user"], got["protocol_policy"],
            got["prestarted"], got["size"]) == ("engineering", "room 4", 2, "prefer_rdp", 3, 4)
    events = client.get(f"{API}/events", params={"code": "pool.updated", "pool_id": pool["id"]}).json()
    assert events["total"] == 1
    message = events["items"][0]["message"]
    assert "admin@local changed pool p" in message
    assert all(f in message for f in ("description", "max_desktops_per_user", "prestarted", "protocol_policy"))


def test_prestarted_is_bounded_by_the_size(client):
    pool = _pool(client)
    response = client.patch(f"{API}/pools/{pool['id']}", json={"prestarted": 5})
    assert response.status_code == 422
    assert "prestarted (5) cannot exceed the pool's size (4)" in response.json()["detail"]
    assert client.get(f"{API}/pools/{pool['id']}").json()["prestarted"] == 0


def test_fields_that_shape_desktops_cannot_change(client):
    pool = _pool(client)
    for field, value in (("size", 10), ("template_id", pool["template_id"]), ("pool_type", "manual"),
                         ("name_pattern", "q-##"), ("memory_mib", 1024), ("name", "renamed")):
        response = client.patch(f"{API}/pools/{pool['id']}", json={field: value})
        assert response.status_code == 422, (field, response.text)
        assert field in response.json()["detail"]


def test_nulls_only_where_a_field_may_be_empty(client):
    pool = _pool(client, lease_seconds=3600)
    refused = client.patch(f"{API}/pools/{pool['id']}", json={"description": None})
    assert refused.status_code == 422 and "description" in refused.json()["detail"]
    cleared = client.patch(f"{API}/pools/{pool['id']}", json={"lease_seconds": None})
    assert cleared.status_code == 200, cleared.text
    assert cleared.json()["lease_seconds"] is None


def test_a_time_based_pool_keeps_a_lease_or_a_window(client):
    pool = _pool(client, pool_type="time_based", lease_seconds=3600)
    refused = client.patch(f"{API}/pools/{pool['id']}", json={"lease_seconds": None})
    assert refused.status_code == 422 and "lease_seconds or a window_end" in refused.json()["detail"]
    moved = client.patch(f"{API}/pools/{pool['id']}", json={"lease_seconds": 7200,
                                                           "window_start": "2030-01-01T08:00:00Z",
                                                           "window_end": "2030-01-01T18:00:00Z"})
    assert moved.status_code == 200, moved.text
    assert moved.json()["lease_seconds"] == 7200
    backwards = client.patch(f"{API}/pools/{pool['id']}", json={"window_end": "2029-12-31T08:00:00Z"})
    assert backwards.status_code == 422 and "window_end must be after window_start" in backwards.json()["detail"]


def test_patch_needs_pools_write(client, anon_client):
    pool = _pool(client)
    from manager import db
    from manager.auth import issue_token
    from manager.models import RoleAssignment, User
    from core.enums import Role

    with db.session_scope() as session:
        helper = User(username="hd", domain="local", upn="hd@local")
        session.add(helper)
        session.flush()
        session.add(RoleAssignment(user_id=helper.id, role=Role.HELP_DESK))
        token = issue_token(session, helper, name="tests")
    response = anon_client.patch(f"{API}/pools/{pool['id']}", json={"comment": "x"},
                                 headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 403, response.text
    missing = client.patch(f"{API}/pools/00000000-0000-0000-0000-000000000000", json={"comment": "x"})
    assert missing.status_code == 404
