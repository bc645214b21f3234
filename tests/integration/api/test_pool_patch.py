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
    for field, value in (("template_id", pool["template_id"]), ("pool_type", "manual"),
                         ("memory_mib", 1024), ("name", "renamed")):
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
    assert refused.status_code == 422 and "lease_seconds, a window_end or a schedule" in refused.json()["detail"]
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


def test_size_is_a_resize_and_name_pattern_names_new_desktops(client):
    pool = _pool(client)
    response = client.patch(f"{API}/pools/{pool['id']}", json={"size": 6, "prestarted": 2, "name_pattern": "q-###"})
    assert response.status_code == 200, response.text
    assert (response.json()["size"], response.json()["prestarted"], response.json()["name_pattern"]) == (6, 2, "q-###")
    resized = client.get(f"{API}/events", params={"code": "pool.resized", "pool_id": pool["id"]}).json()["items"]
    assert len(resized) == 1 and "from 4 to 6 desktops (2 prestarted)" in resized[0]["message"]
    jobs = client.get(f"{API}/jobs", params={"target_id": pool["id"]}).json()["items"]
    assert "pools.resize" in {j["kind"] for j in jobs}
    shrink = client.patch(f"{API}/pools/{pool['id']}", json={"size": 1})
    assert shrink.status_code == 422 and "prestarted (2) cannot exceed the pool's size (1)" in shrink.json()["detail"]
    bad = client.patch(f"{API}/pools/{pool['id']}", json={"name_pattern": "no hashes"})
    assert bad.status_code == 422 and "name_pattern" in bad.json()["detail"]


def test_a_pool_cannot_shrink_below_the_desktops_users_hold(client):
    from manager import db
    from manager.models import Desktop, User

    pool = _pool(client, pool_type="manual")
    with db.session_scope() as session:
        users = [User(username=f"u{i}", domain="local", upn=f"u{i}@local") for i in range(3)]
        session.add_all(users)
        session.flush()
        for i, user in enumerate(users):
            session.add(Desktop(name=f"p-0{i}", pool_id=pool["id"], assigned_user_id=user.id if i < 2 else None))
    refused = client.patch(f"{API}/pools/{pool['id']}", json={"size": 1})
    assert refused.status_code == 409, refused.text
    assert "users hold 2 of its desktops" in refused.json()["detail"]
    assert "removes free desktops only" in refused.json()["detail"]
    assert client.get(f"{API}/pools/{pool['id']}").json()["size"] == 4
    assert client.patch(f"{API}/pools/{pool['id']}", json={"size": 2}).status_code == 200


def test_recurring_schedule_is_checked_and_stored(client):
    pool = _pool(client, pool_type="time_based", lease_seconds=3600)
    week = [{"days": ["fri", "mon", "tue", "wed", "thu"], "start": "08:00", "end": "18:00"},
            {"days": ["sat"], "start": "22:00", "end": "02:00"}]
    ok = client.patch(f"{API}/pools/{pool['id']}", json={"schedule": week, "time_zone": "Europe/Paris"})
    assert ok.status_code == 200, ok.text
    assert ok.json()["schedule"][0]["days"] == ["mon", "tue", "wed", "thu", "fri"]
    assert ok.json()["time_zone"] == "Europe/Paris"
    for body, words in (({"time_zone": "Mars/Olympus"}, "not an IANA time zone"),
                        ({"schedule": [{"days": ["funday"], "start": "08:00", "end": "18:00"}]}, "days"),
                        ({"schedule": [{"days": ["mon"], "start": "25:00", "end": "18:00"}]}, "start"),
                        ({"schedule": None}, "schedule")):
        response = client.patch(f"{API}/pools/{pool['id']}", json=body)
        assert response.status_code == 422 and words in response.json()["detail"], (body, response.text)
    # a schedule is enough for a time-based pool (leases end at closing)
    assert client.patch(f"{API}/pools/{pool['id']}", json={"lease_seconds": None}).status_code == 200
    cleared = client.patch(f"{API}/pools/{pool['id']}", json={"schedule": []})
    assert cleared.status_code == 422 and "lease_seconds, a window_end or a schedule" in cleared.json()["detail"]
    automatic = _pool(client, name="auto")
    refused = client.patch(f"{API}/pools/{automatic['id']}", json={"schedule": week})
    assert refused.status_code == 422 and "only time_based pools" in refused.json()["detail"]
