"""NodeClient against a real node agent process on loopback (libvirt's test driver behind it)."""
from __future__ import annotations

import uuid

import httpx
import pytest

from core.errors import (
    BadRequest,
    Conflict,
    DomainNotFound,
    HypervisorError,
    Invalid,
    NodeUnreachable,
    NotAuthenticated,
)
from core.specs import DomainStats, HostCaps
from manager.nodes import NodeClient
from tests.unit.node.conftest import desktop_spec

from .conftest import AgentProcess, free_port

TOKEN = "client-test-token"


@pytest.fixture
def agent(test_driver_uri, agent_processes, tmp_path) -> AgentProcess:
    process = AgentProcess(test_driver_uri, TOKEN, log_path=tmp_path / "agent.log")
    agent_processes.append(process)
    return process.start()


@pytest.fixture
def client(agent):
    with NodeClient(agent.url, TOKEN, timeout=10) as node:
        yield node


def test_every_route_through_the_client(client):
    assert client.health()["status"] == "ok"
    caps = client.capabilities()
    assert isinstance(caps, HostCaps) and caps.domain_types == ["test"]
    spec = desktop_spec()
    defined = client.define(spec)
    assert (defined["uuid"], defined["state"]) == (spec.uuid, "down")
    assert client.define(spec)["uuid"] == spec.uuid
    assert [d["uuid"] for d in client.list_domains()] == [spec.uuid]
    assert client.start(spec.uuid)["state"] == "up"
    assert client.get_domain(spec.uuid)["graphics"][0]["type"] == "spice"
    stats = client.stats()
    assert [(s.uuid, s.state) for s in stats] == [(spec.uuid, "up")] and isinstance(stats[0], DomainStats)
    assert client.screenshot(spec.uuid).startswith(b"\x89PNG")
    client.send_key(spec.uuid, [29, 56, 111])  # Ctrl+Alt+Del
    assert client.suspend(spec.uuid)["state"] == "paused"
    assert client.resume(spec.uuid)["state"] == "up"
    assert client.reboot(spec.uuid)["state"] == "up"
    assert client.shutdown(spec.uuid, timeout=5)["state"] == "down"
    assert client.start(spec.uuid)["state"] == "up"
    assert client.poweroff(spec.uuid)["state"] == "down"
    client.undefine(spec.uuid)
    assert client.list_domains() == []


def test_agent_errors_come_back_as_typed_errors(client):
    missing = str(uuid.uuid4())
    with pytest.raises(DomainNotFound) as info:
        client.get_domain(missing)
    assert info.value.status == 404 and missing in info.value.message
    with pytest.raises(DomainNotFound):
        client.start(missing)
    with pytest.raises(Invalid, match="monitors is 9"):
        client.define(desktop_spec(monitors=9))
    spec = desktop_spec()
    client.define(spec)
    client.start(spec.uuid)
    with pytest.raises(Conflict, match="running"):
        client.undefine(spec.uuid)
    with pytest.raises(HypervisorError, match="hypervisor error 3"):
        client.set_ticket(spec.uuid, "pw", 60)  # the test driver cannot update devices
    with pytest.raises(Invalid, match="libvirt URI"):
        client.migrate(spec.uuid, "not-a-uri")
    with pytest.raises(Invalid):
        client.guest(spec.uuid, "two\nlines")


def test_wrong_token_is_not_authenticated(agent):
    with NodeClient(agent.url, "wrong", timeout=5) as node:
        with pytest.raises(NotAuthenticated):
            node.list_domains()


def test_a_host_that_does_not_answer_is_node_unreachable():
    with NodeClient(f"http://127.0.0.1:{free_port()}", TOKEN, timeout=2) as node:
        with pytest.raises(NodeUnreachable) as info:
            node.health()
    assert info.value.status == 503 and "did not answer" in info.value.message


def test_a_dead_agent_is_node_unreachable(agent):
    with NodeClient(agent.url, TOKEN, timeout=5) as node:
        assert node.health()["status"] == "ok"
        agent.kill()
        with pytest.raises(NodeUnreachable):
            node.list_domains()


def test_bad_request_bodies_are_refused_clearly(agent):
    response = httpx.put(f"{agent.url}/v1/domains/{uuid.uuid4()}", content=b"[",
                         headers={"Authorization": f"Bearer {TOKEN}"})
    assert response.status_code == BadRequest.status
    assert response.json()["error"] == BadRequest.code
