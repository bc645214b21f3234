"""The agent's resize and disks routes over a private test-driver hypervisor: memory changes live up to the maximum
the domain runs with, vCPUs beyond its maximum and anything on a stopped domain wait for the next boot; bad bodies
are 4xx; GET /v1/disks names every defined domain's disk files, running or not (real QEMU and the guest's view are in
tests/integration/broker/test_desktop_life.py)."""
from __future__ import annotations

import uuid

import pytest

from tests.unit.node.test_agent_disk_routes import client  # noqa: F401  (the agent app over the test driver)


def _defined(client, make_spec, memory_mib: int = 256):
    spec = make_spec(memory_mib=memory_mib, vcpus=1)
    assert client.put(f"/v1/domains/{spec.uuid}", json=spec.to_dict()).status_code == 200
    return spec


def test_memory_goes_live_up_to_the_maximum_and_the_rest_waits_for_the_next_boot(client, make_spec):
    spec = _defined(client, make_spec)
    stopped = client.post(f"/v1/domains/{spec.uuid}/resize", json={"memory_mib": 128, "vcpus": 1})
    assert stopped.json() == {"applied": {"memory_mib": "next_boot", "vcpus": "next_boot"}}, stopped.text
    assert client.post(f"/v1/domains/{spec.uuid}/start").json()["state"] == "up"
    live = client.post(f"/v1/domains/{spec.uuid}/resize", json={"memory_mib": 128})
    assert live.json() == {"applied": {"memory_mib": "live"}}, live.text
    assert client.post(f"/v1/domains/{spec.uuid}/resize", json={"memory_mib": 256}).json()["applied"] == {
        "memory_mib": "live"}  # back up to the maximum it booted with
    over = client.post(f"/v1/domains/{spec.uuid}/resize", json={"memory_mib": 512, "vcpus": 2})
    assert over.json() == {"applied": {"memory_mib": "next_boot", "vcpus": "next_boot"}}, over.text


@pytest.mark.parametrize("body,status,words", [
    ({"memory_mib": "lots"}, 422, "wrong type"),
    ({"memory_mib": 0}, 422, "positive integer"),
    ({"vcpus": -1}, 422, "positive integer"),
])
def test_a_bad_resize_is_refused(client, make_spec, body, status, words):
    spec = _defined(client, make_spec)
    response = client.post(f"/v1/domains/{spec.uuid}/resize", json=body)
    assert response.status_code == status and words in response.json()["detail"], response.text


def test_resize_of_an_unknown_domain_is_a_404(client):
    assert client.post(f"/v1/domains/{uuid.uuid4()}/resize", json={"memory_mib": 128}).status_code == 404


def test_disks_names_the_files_of_every_defined_domain(client, make_spec):
    first, second = _defined(client, make_spec), _defined(client, make_spec)
    assert client.post(f"/v1/domains/{second.uuid}/start").status_code == 200
    found = {d["uuid"]: d["paths"] for d in client.get("/v1/disks").json()["domains"]}
    assert first.disk_path in found[first.uuid] and second.disk_path in found[second.uuid]
