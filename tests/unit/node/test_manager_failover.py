"""A node agent given several managers' URLs moves on to the next when one cannot be reached or fails, and stays
with the one that answered. The managers are stubbed at the HTTP boundary here; tests/integration/ha/
test_manager_failover.py runs the same failover against real `vdi serve` processes, one of them killed."""
from __future__ import annotations

import asyncio

import httpx
import pytest

from core.errors import Invalid
from hypervisor_node.agent import Heartbeat, build_parser
from hypervisor_node.managers import ManagerEndpoints, parse_manager_urls

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
