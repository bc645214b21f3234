"""The heartbeat: its JSON, its URL and token, and logging transitions rather than attempts."""
from __future__ import annotations

import asyncio
import json
import logging
import time

import httpx
import pytest

from starlette.testclient import TestClient

from core.errors import Invalid
from hypervisor_node.agent import Heartbeat, create_app
from hypervisor_node.driver import LibvirtDriver

TOKEN = "hb-token"


class ManagerStub:
    """Stands in for the manager's HTTP endpoint (a process boundary): records bodies, answers as told."""

    def __init__(self) -> None:
        self.requests: list[httpx.Request] = []
        self.mode = "ok"  # "ok" | "down" | "401"

    def handle(self, request: httpx.Request) -> httpx.Response:
        if self.mode == "down":
            raise httpx.ConnectError("connection refused", request=request)
        self.requests.append(request)
        if self.mode == "401":
            return httpx.Response(401, json={"error": "not_authenticated", "detail": "wrong node token"})
        return httpx.Response(200, json={"ok": True})

    def bodies(self) -> list[dict]:
        return [json.loads(r.content) for r in self.requests]


@pytest.fixture
def proc_root(tmp_path):
    root = tmp_path / "proc"
    root.mkdir()
    (root / "stat").write_text("cpu  100 0 100 800 0 0 0 0 0 0\ncpu0 100 0 100 800 0 0 0 0 0 0\n")
    (root / "meminfo").write_text("MemTotal: 1000 kB\nMemFree: 100 kB\nMemAvailable: 250 kB\n")
    return root


@pytest.fixture
def manager():
    return ManagerStub()


def make_heartbeat(driver: LibvirtDriver, manager: ManagerStub, proc_root) -> Heartbeat:
    return Heartbeat(driver, "node-7", "http://manager.invalid:8000/", TOKEN, interval=0.01,
                     proc_root=str(proc_root), transport=httpx.MockTransport(manager.handle))


async def beats(heartbeat: Heartbeat, count: int) -> list[bool]:
    async with httpx.AsyncClient(transport=heartbeat._transport) as client:
        return [await heartbeat.beat(client) for _ in range(count)]


def test_heartbeat_body_url_and_token(driver, manager, proc_root, make_spec):
    running, stopped = make_spec(), make_spec()
    for spec in (running, stopped):
        driver.define(spec)
    driver.start(running.uuid)
    heartbeat = make_heartbeat(driver, manager, proc_root)
    assert asyncio.run(beats(heartbeat, 2)) == [True, True]

    request = manager.requests[0]
    assert str(request.url) == "http://manager.invalid:8000/api/v1/nodes/node-7/heartbeat"
    assert request.headers["authorization"] == f"Bearer {TOKEN}"
    first, second = manager.bodies()
    assert set(first) == {"seq", "agent_started_at", "caps", "cpu_usage", "mem_usage", "domains", "guest",
                          "leader_epoch"}
    assert first["guest"] == {}  # the test driver's domains have no guest agent to ask
    assert (first["seq"], second["seq"]) == (1, 2)
    assert first["agent_started_at"] == heartbeat.started_at == second["agent_started_at"]
    assert first["caps"]["domain_types"] == ["test"] and first["caps"]["cpus"] > 0
    assert first["cpu_usage"] == 20  # (100 user + 100 system) of 1000 jiffies since boot
    assert first["mem_usage"] == 75  # (1000 - 250 available) / 1000
    states = {d["uuid"]: d["state"] for d in first["domains"]}
    assert states == {running.uuid: "up", stopped.uuid: "down"}
    assert set(first["domains"][0]) == {"uuid", "name", "state", "cpu_usage", "mem_usage", "cpu_time_ns",
                                        "memory_kib", "vcpus"}


def test_an_unreachable_manager_is_logged_once_and_its_recovery_once(driver, manager, proc_root, caplog):
    heartbeat = make_heartbeat(driver, manager, proc_root)
    caplog.set_level(logging.DEBUG, logger="hypervisor_node.agent")

    async def scenario() -> list[bool]:
        async with httpx.AsyncClient(transport=heartbeat._transport) as client:
            results = [await heartbeat.beat(client)]
            manager.mode = "down"
            results += [await heartbeat.beat(client) for _ in range(4)]
            manager.mode = "ok"
            results += [await heartbeat.beat(client) for _ in range(3)]
            manager.mode = "401"
            results += [await heartbeat.beat(client) for _ in range(2)]
        return results

    results = asyncio.run(scenario())
    assert results == [True] + [False] * 4 + [True] * 3 + [False] * 2
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    recoveries = [r.getMessage() for r in caplog.records if "accepts heartbeats again" in r.getMessage()]
    assert len(warnings) == 2, warnings
    assert "ConnectError" in warnings[0] and "HTTP 401" in warnings[1]
    assert recoveries == ["manager at http://manager.invalid:8000/api/v1/nodes/node-7/heartbeat accepts "
                          "heartbeats again after 4 failed attempt(s)"]
    assert [b["seq"] for b in manager.bodies()] == [1, 6, 7, 8, 9, 10]  # seq counts every attempt


def test_no_heartbeat_while_the_hypervisor_is_unavailable(tmp_path, manager, proc_root, caplog):
    broken = LibvirtDriver(f"test://{tmp_path}/missing-node.xml")
    heartbeat = make_heartbeat(broken, manager, proc_root)
    assert asyncio.run(beats(heartbeat, 3)) == [False, False, False]
    assert manager.requests == []
    assert [r.getMessage()[:23] for r in caplog.records if r.levelno == logging.WARNING
            and r.name == "hypervisor_node.agent"] == ["hypervisor unavailable "]


def test_heartbeat_runs_for_the_lifetime_of_the_app(driver, manager, proc_root):
    heartbeat = make_heartbeat(driver, manager, proc_root)
    app = create_app(driver, TOKEN, heartbeat=heartbeat)
    with TestClient(app):
        deadline = 200
        while len(manager.requests) < 3 and deadline:
            time.sleep(0.05)
            deadline -= 1
    assert len(manager.requests) >= 3
    stopped_at = len(manager.requests)
    time.sleep(0.1)
    assert len(manager.requests) == stopped_at  # the task ended with the app


def test_interval_must_be_positive(driver):
    with pytest.raises(Invalid, match="positive"):
        Heartbeat(driver, "n", "http://m", TOKEN, interval=0)
