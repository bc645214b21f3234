"""A node agent given several managers' URLs moves on to the next when one cannot be reached or fails, and stays
with the one that answered; it refuses the commands of a former leader manager (an older epoch). The managers are stubbed at the HTTP boundary here; tests/integration/ha/
test_manager_failover.py runs the same failover against real `vdi serve` processes, one of them killed."""
from __future__ import annotations

import asyncio

import httpx
import pytest
from starlette.testclient import TestClient

from core.errors import Invalid
from core.specs import LEADER_EPOCH_HEADER
from hypervisor_node.agent import Heartbeat, build_parser, create_app
from hypervisor_node.managers import EpochFence, ManagerEndpoints, parse_manager_urls

A, B, C = "http://mgr-a.invalid:8000", "http://mgr-b.invalid:8000", "http://mgr-c.invalid:8000"


class Managers:
    """Several managers behind one transport: each answers as its mode says ("ok", "down", "503", "401")."""

    def __init__(self, **modes: str) -> None:
        self.modes = modes
        self.asked: list[str] = []

    def handle(self, request: httpx.Request) -> httpx.Response:
        name = request.url.host.split(".")[0].removeprefix("mgr-")
        self.asked.append(name)
        mode = self.modes[name]
        if mode == "down":
            raise httpx.ConnectError("connection refused", request=request)
        if mode == "503":
            return httpx.Response(503, json={"error": "unavailable", "detail": "database down"})
        if mode == "401":
            return httpx.Response(401, json={"error": "not_authenticated", "detail": "wrong node token"})
        return httpx.Response(200, json={"ok": True})


def post(endpoints: ManagerEndpoints, managers: Managers) -> httpx.Response:
    async def run():
        async with httpx.AsyncClient(transport=httpx.MockTransport(managers.handle)) as client:
            return await endpoints.post(client, "/api/v1/x", json={})
    return asyncio.run(run())


def test_urls_are_a_comma_separated_list():
    assert parse_manager_urls(f" {A}/, {B} ,,") == [A, B]
    assert parse_manager_urls([A, B]) == [A, B]
    with pytest.raises(Invalid, match="http:// or https://"):
        parse_manager_urls("mgr-a:8000")
    with pytest.raises(Invalid, match="no manager URL"):
        ManagerEndpoints(" , ")
    assert build_parser().parse_args(["--name", "n", "--manager", f"{A},{B}"]).manager == f"{A},{B}"


def test_an_unreachable_manager_is_replaced_by_the_next_which_stays_in_use():
    endpoints, managers = ManagerEndpoints([A, B, C]), Managers(a="down", b="ok", c="ok")
    assert post(endpoints, managers).status_code == 200
    assert (managers.asked, endpoints.current) == (["a", "b"], B)
    managers.asked.clear()
    managers.modes["a"] = "ok"  # the first one is back: the agent stays where it is until that one fails
    post(endpoints, managers)
    assert managers.asked == ["b"]


def test_a_server_error_moves_on_but_a_refusal_does_not():
    endpoints, managers = ManagerEndpoints([A, B]), Managers(a="503", b="ok")
    assert post(endpoints, managers).status_code == 200 and endpoints.current == B
    endpoints, managers = ManagerEndpoints([A, B]), Managers(a="401", b="ok")
    assert post(endpoints, managers).status_code == 401  # another manager would refuse the token too
    assert (managers.asked, endpoints.current) == (["a"], A)


def test_when_no_manager_answers_the_last_failure_is_raised_and_the_current_one_kept():
    endpoints, managers = ManagerEndpoints([A, B]), Managers(a="down", b="down")
    with pytest.raises(httpx.ConnectError):
        post(endpoints, managers)
    assert (managers.asked, endpoints.current) == (["a", "b"], A)
    endpoints, managers = ManagerEndpoints([A, B]), Managers(a="down", b="503")
    assert post(endpoints, managers).status_code == 503


def test_heartbeats_fail_over_to_the_next_manager(driver, tmp_path):
    proc = tmp_path / "proc"
    proc.mkdir()
    (proc / "stat").write_text("cpu  100 0 100 800 0 0 0 0 0 0\n")
    (proc / "meminfo").write_text("MemTotal: 1000 kB\nMemFree: 100 kB\nMemAvailable: 250 kB\n")
    managers = Managers(a="down", b="ok")
    heartbeat = Heartbeat(driver, "node-7", f"{A},{B}", "t", interval=0.01, proc_root=str(proc),
                          transport=httpx.MockTransport(managers.handle))

    async def beat():
        async with httpx.AsyncClient(transport=heartbeat._transport) as client:
            return await heartbeat.beat(client)

    assert asyncio.run(beat()) is True
    assert heartbeat.url == f"{B}/api/v1/nodes/node-7/heartbeat" and heartbeat.manager_reachable


# ---- the epoch fence: a former leader's commands are refused --------------------------------------------------

def test_the_fence_refuses_older_epochs_writes_only():
    fence = EpochFence()
    assert fence.refuses("POST", "3") is None and fence.highest == 3
    fence.learn(5)
    assert fence.refuses("POST", "4") == "write refused: epoch 4 no longer holds the manager leadership (epoch 5 does)"
    assert fence.refuses("GET", "4") is None  # a former leader may still read
    assert fence.refuses("POST", None) is None  # a user's action through any manager carries no epoch
    assert fence.refuses("POST", "5") is None and fence.refuses("DELETE", "6") is None and fence.highest == 6
    assert "must be an integer" in fence.refuses("POST", "six")
    fence.learn(None)
    fence.learn(True)
    fence.learn(2)
    assert fence.highest == 6


def test_the_agent_answers_a_former_leaders_command_with_409_not_leader(driver):
    app = create_app(driver, "t" * 20, node_name="n1")
    auth = {"Authorization": "Bearer " + "t" * 20}
    with TestClient(app) as agent:
        missing = "00000000-0000-4000-8000-000000000001"
        assert agent.post(f"/v1/domains/{missing}/start", headers={**auth, LEADER_EPOCH_HEADER: "7"}).status_code \
            == 404  # epoch 7 passes the fence (the domain does not exist)
        refused = agent.post(f"/v1/domains/{missing}/start", headers={**auth, LEADER_EPOCH_HEADER: "6"})
        assert refused.status_code == 409 and refused.json()["error"] == "not_leader"
        assert agent.get(f"/v1/domains/{missing}", headers={**auth, LEADER_EPOCH_HEADER: "6"}).status_code == 404
        assert agent.post(f"/v1/domains/{missing}/start", headers=auth).status_code == 404
        bad = agent.post(f"/v1/domains/{missing}/start", headers={**auth, LEADER_EPOCH_HEADER: "x"})
        assert bad.status_code == 400
        assert agent.get(f"/v1/domains/{missing}/start", headers={LEADER_EPOCH_HEADER: "1"}).status_code == 401
        assert agent.get("/v1/health", headers=auth).json()["leader_epoch"] == 7


def test_heartbeat_replies_teach_the_agent_the_leader_epoch(driver, tmp_path):
    proc = tmp_path / "proc"
    proc.mkdir()
    (proc / "stat").write_text("cpu  100 0 100 800 0 0 0 0 0 0\n")
    (proc / "meminfo").write_text("MemTotal: 1000 kB\nMemFree: 100 kB\nMemAvailable: 250 kB\n")

    def manager(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json={"ok": True, "leader_epoch": 9})

    heartbeat = Heartbeat(driver, "node-7", A, "t", interval=0.01, proc_root=str(proc),
                          transport=httpx.MockTransport(manager))

    async def beat():
        async with httpx.AsyncClient(transport=heartbeat._transport) as client:
            return await heartbeat.beat(client)

    assert asyncio.run(beat()) is True and heartbeat.fence.highest == 9
    assert heartbeat.fence.refuses("POST", "8") is not None
