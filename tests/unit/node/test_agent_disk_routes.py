"""The agent's live-snapshot and block-commit routes over a private test-driver hypervisor: request checking,
typed errors, and what the test driver answers (it cannot take disk-only snapshots; real QEMU is in
tests/integration/node/test_disk_snapshots.py)."""
from __future__ import annotations

import uuid

import libvirt
import pytest
from starlette.testclient import TestClient

from hypervisor_node.agent import create_app

TOKEN = "node-token-for-tests"


@pytest.fixture
def client(driver):
    with TestClient(create_app(driver, TOKEN), headers={"Authorization": f"Bearer {TOKEN}"}) as c:
        yield c


@pytest.fixture
def running(client, make_spec):
    spec = make_spec()
    assert client.put(f"/v1/domains/{spec.uuid}", json=spec.to_dict()).status_code == 200
    assert client.post(f"/v1/domains/{spec.uuid}/start").json()["state"] == "up"
    return spec.uuid


@pytest.mark.parametrize("route", ["snapshot", "blockcommit"])
def test_routes_need_the_token(driver, route):
    with TestClient(create_app(driver, TOKEN)) as anon:
        response = anon.post(f"/v1/domains/{uuid.uuid4()}/{route}", json={})
    assert response.status_code == 401 and response.json()["error"] == "not_authenticated"


@pytest.mark.parametrize("body,status,error,words", [
    (None, 400, "bad_request", "JSON object"),
    ({}, 422, "invalid", "'overlay' is required"),
    ({"overlay": 5}, 422, "invalid", "wrong type"),
    ({"overlay": "relative.qcow2"}, 422, "invalid", "absolute"),
    ({"overlay": "/images/../etc/x.qcow2"}, 422, "invalid", "normalised"),
])
def test_snapshot_body_is_checked(client, running, body, status, error, words):
    response = client.post(f"/v1/domains/{running}/snapshot", **({} if body is None else {"json": body}))
    assert response.status_code == status, response.text
    assert response.json()["error"] == error and words in response.json()["detail"]


def test_snapshot_on_the_test_driver_is_a_hypervisor_error(client, running, tmp_path):
    response = client.post(f"/v1/domains/{running}/snapshot", json={"overlay": str(tmp_path / "o.qcow2")})
    assert response.status_code == 502
    assert response.json()["error"] == "hypervisor_error"
    assert f"hypervisor error {libvirt.VIR_ERR_INVALID_ARG}" in response.json()["detail"]


@pytest.mark.parametrize("body,words", [
    ({"top": 3}, "wrong type"),
    ({"base": "x.qcow2"}, "absolute"),
    ({"timeout": "soon"}, "wrong type"),
    ({"timeout": 0}, "timeout must be"),
    ({"timeout": True}, "wrong type"),
    ({}, "no backing file"),  # the test driver shows no backing chain
])
def test_blockcommit_body_is_checked(client, running, body, words):
    response = client.post(f"/v1/domains/{running}/blockcommit", json=body)
    assert response.status_code == 422, response.text
    assert response.json()["error"] == "invalid" and words in response.json()["detail"]


def test_unknown_domain_and_stopped_domain(client, make_spec, tmp_path):
    missing = str(uuid.uuid4())
    for route, body in (("snapshot", {"overlay": str(tmp_path / "o.qcow2")}), ("blockcommit", {})):
        response = client.post(f"/v1/domains/{missing}/{route}", json=body)
        assert response.status_code == 404 and response.json()["error"] == "domain_not_found"
    spec = make_spec()
    client.put(f"/v1/domains/{spec.uuid}", json=spec.to_dict())
    for route, body in (("snapshot", {"overlay": str(tmp_path / "o.qcow2")}), ("blockcommit", {})):
        response = client.post(f"/v1/domains/{spec.uuid}/{route}", json=body)
        assert response.status_code == 409 and "not running" in response.json()["detail"], response.text
