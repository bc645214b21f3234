"""The node agent's HTTP API over a private libvirt test-driver hypervisor (starlette's TestClient)."""
from __future__ import annotations

import uuid

import pytest
from starlette.testclient import TestClient

from hypervisor_node.agent import create_app
from hypervisor_node.screenshot import PNG_SIGNATURE

TOKEN = "node-token-for-tests"


@pytest.fixture
def client(driver):
    app = create_app(driver, TOKEN, node_name="node-t")
    with TestClient(app, headers={"Authorization": f"Bearer {TOKEN}"}) as c:
        yield c


@pytest.fixture
def anon(driver):
    with TestClient(create_app(driver, TOKEN)) as c:
        yield c


def spec_body(make_spec, **overrides) -> dict:
    return make_spec(**overrides).to_dict()


@pytest.mark.parametrize("path,method", [
    ("/v1/health", "GET"), ("/v1/capabilities", "GET"), ("/v1/domains", "GET"), ("/v1/stats", "GET"),
    # fixed ids: a test's id must be the same in every collection (make test's shards compare theirs)
    ("/v1/domains/6d1c1f52-0d4e-4c1a-9a57-0c1f4c7a2b10", "DELETE"),
    ("/v1/domains/6d1c1f52-0d4e-4c1a-9a57-0c1f4c7a2b11/start", "POST"),
    ("/v1/no-such-route", "GET"),
])
@pytest.mark.parametrize("auth", [None, "Bearer wrong-token", f"Basic {TOKEN}", f"Bearer {TOKEN}x", "Bearer"])
def test_every_route_refuses_a_missing_or_wrong_token(anon, path, method, auth):
    headers = {"Authorization": auth} if auth else {}
    response = anon.request(method, path, headers=headers)
    assert response.status_code == 401
    assert response.json()["error"] == "not_authenticated"
    assert response.headers["www-authenticate"] == "Bearer"


def test_health_and_capabilities(client):
    health = client.get("/v1/health").json()
    assert health["status"] == "ok" and health["node"] == "node-t"
    caps = client.get("/v1/capabilities").json()
    assert caps["domain_types"] == ["test"] and caps["cpus"] > 0 and caps["memory_mib"] > 0


def test_unknown_domain_is_404_domain_not_found(client):
    missing = str(uuid.uuid4())
    for method, path in [("GET", ""), ("DELETE", ""), ("POST", "/start"), ("POST", "/poweroff"),
                         ("GET", "/screenshot")]:
        response = client.request(method, f"/v1/domains/{missing}{path}")
        assert response.status_code == 404, (method, path)
        assert response.json() == {"error": "domain_not_found",
                                   "detail": f"domain {missing} is not defined on this host"}


def test_define_list_start_stats_screenshot_stop_delete(client, make_spec):
    body = spec_body(make_spec)
    domain_uuid = body["uuid"]
    defined = client.put(f"/v1/domains/{domain_uuid}", json=body)
    assert defined.status_code == 200, defined.text
    assert defined.json()["state"] == "down"
    assert client.put(f"/v1/domains/{domain_uuid}", json=body).status_code == 200  # idempotent
    assert client.get("/v1/domains").json() == {"domains": [
        {"uuid": domain_uuid, "name": body["name"], "state": "down", "desktop_id": domain_uuid}]}

    assert client.post(f"/v1/domains/{domain_uuid}/start").json()["state"] == "up"
    one = client.get(f"/v1/domains/{domain_uuid}").json()
    assert one["state"] == "up" and [g["type"] for g in one["graphics"]] == ["spice", "vnc"]
    stats = client.get("/v1/stats").json()["domains"]
    assert [(s["uuid"], s["state"]) for s in stats] == [(domain_uuid, "up")]

    shot = client.get(f"/v1/domains/{domain_uuid}/screenshot")
    assert shot.status_code == 200 and shot.headers["content-type"] == "image/png"
    assert shot.content.startswith(PNG_SIGNATURE)

    keys = client.post(f"/v1/domains/{domain_uuid}/keys", json={"keycodes": [29, 56, 111]})  # Ctrl+Alt+Del
    assert keys.status_code == 204, keys.text
    for bad in ({"keycodes": []}, {"keycodes": [0]}, {"keycodes": ["ctrl"]}, {"keycodes": [29], "hold_ms": -1}, {}):
        refused = client.post(f"/v1/domains/{domain_uuid}/keys", json=bad)
        assert refused.status_code == 422 and refused.json()["error"] == "invalid", (bad, refused.text)

    assert client.post(f"/v1/domains/{domain_uuid}/suspend").json()["state"] == "paused"
    assert client.post(f"/v1/domains/{domain_uuid}/resume").json()["state"] == "up"
    refused = client.delete(f"/v1/domains/{domain_uuid}")
    assert refused.status_code == 409 and refused.json()["error"] == "conflict"
    assert client.post(f"/v1/domains/{domain_uuid}/shutdown", json={"timeout": 5}).json()["state"] == "down"
    not_running = client.post(f"/v1/domains/{domain_uuid}/keys", json={"keycodes": [29, 56, 111]})
    assert not_running.status_code == 409 and "not running" in not_running.json()["detail"], not_running.text
    assert client.delete(f"/v1/domains/{domain_uuid}").status_code == 204
    assert client.get("/v1/domains").json() == {"domains": []}


@pytest.mark.parametrize("body,status,message", [
    ({"name": "x"}, 422, "lacks required field(s): vcpus, memory_mib, disk_path"),
    ({"monitors": 7}, 422, "monitors is 7"),
    ({"uuid": str(uuid.UUID(int=5))}, 422, "does not match the URL"),
    ({"disk_path": "relative.qcow2"}, 422, "disk_path must be an absolute path"),
])
def test_bad_specs_are_clear_4xx(client, make_spec, body, status, message):
    full = spec_body(make_spec)
    url_uuid = full["uuid"]
    if body.keys() == {"name"}:
        full = {"name": "x"}
    else:
        full.update(body)
    response = client.put(f"/v1/domains/{url_uuid}", json=full)
    assert response.status_code == status
    assert message in response.json()["detail"]


def test_malformed_json_and_bad_fields(client, make_spec):
    spec = make_spec()
    client.put(f"/v1/domains/{spec.uuid}", json=spec.to_dict())
    broken = client.put(f"/v1/domains/{spec.uuid}", content=b"{not json",
                        headers={"Content-Type": "application/json"})
    assert broken.status_code == 400 and broken.json()["error"] == "bad_request"
    listed = client.put(f"/v1/domains/{spec.uuid}", json=[1, 2])
    assert listed.status_code == 400 and "JSON object" in listed.json()["detail"]
    ticket = client.post(f"/v1/domains/{spec.uuid}/ticket", json={"password": 5})
    assert ticket.status_code == 422 and "'password' has the wrong type" in ticket.json()["detail"]
    shutdown = client.post(f"/v1/domains/{spec.uuid}/shutdown", json={"timeout": "soon"})
    assert shutdown.status_code == 422
    guest = client.post(f"/v1/domains/{spec.uuid}/guest", json={})
    assert guest.status_code == 422 and "'command' is required" in guest.json()["detail"]
    migrate = client.post(f"/v1/domains/{spec.uuid}/migrate", json={"dest_uri": "nowhere"})
    assert migrate.status_code == 422 and "libvirt URI" in migrate.json()["detail"]


def test_unknown_action_and_malformed_uuid(client):
    assert client.post(f"/v1/domains/{uuid.uuid4()}/explode").status_code == 404
    bad = client.get("/v1/domains/not-a-uuid")
    assert bad.status_code == 422 and "not a domain UUID" in bad.json()["detail"]
    wrong_method = client.patch("/v1/domains")
    assert wrong_method.status_code == 405 and wrong_method.json()["error"] == "method_not_allowed"


def test_hypervisor_failures_are_502_with_the_libvirt_code(client, make_spec):
    spec = make_spec()
    client.put(f"/v1/domains/{spec.uuid}", json=spec.to_dict())
    client.post(f"/v1/domains/{spec.uuid}/start")
    response = client.post(f"/v1/domains/{spec.uuid}/ticket", json={"password": "pw", "valid_seconds": 60})
    assert response.status_code == 502  # the test driver cannot update a device
    assert response.json()["error"] == "hypervisor_error"
    assert response.json()["detail"].startswith("hypervisor error 3:")


def test_guest_call_on_a_stopped_domain_is_a_conflict(client, make_spec):
    spec = make_spec()
    client.put(f"/v1/domains/{spec.uuid}", json=spec.to_dict())
    response = client.post(f"/v1/domains/{spec.uuid}/guest", json={"command": "ping"})
    assert response.status_code == 409 and "not running" in response.json()["detail"]
