"""Manager HA with real `vdi serve` processes on one real Postgres database (issue 16 item 6): exactly one leads; a
SIGKILLed leader is replaced by the standby, which serves new requests, and a node agent given both managers' URLs
keeps reporting through the standby and refuses the old epoch's commands; a leader paused past its lease (SIGSTOP) has its singleton loop's writes
refused by the epoch check when it wakes, and steps down.

Lease timings are short (ttl 3 s, renewal 1 s); every wait is a poll with a generous bound, never a timing
assertion (bench/ha_failover.py measures the takeover)."""
from __future__ import annotations

import socket
import subprocess
import sys
import threading
from collections.abc import Iterator

import httpx
import pytest
from sqlalchemy import text

from core.errors import DomainNotFound
from ha_manager.service import NotLeader, fenced
from manager.nodes.client import NodeClient

from manager.db import make_engine
from manager.embedded_nodes import free_port, wait_until_answers
from tests.harness.managers import REPO, ManagerGroup, manager_group, wait_for
from tests.harness.postgres import fresh_database
from tests.harness.processes import kill_process_tree

NODE_TOKEN = "ha-node-token-" + "n" * 20


@pytest.fixture
def ha_database() -> Iterator[str]:
    with fresh_database("vdi_ha") as url:
        yield url


@pytest.fixture
def group(ha_database, tmp_path) -> Iterator[ManagerGroup]:
    with manager_group(ha_database, tmp_path / "managers",
                       env={"VDI_HEARTBEAT_SECONDS": "0.5", "VDI_HA_CHECK_SECONDS": "0.5",
                            "VDI_HA_PROBE_TIMEOUT_SECONDS": "2"}) as managers:
        yield managers


@pytest.fixture
def db(ha_database):
    engine = make_engine(ha_database)
    yield engine
    engine.dispose()


def one_leader(group: ManagerGroup) -> str:
    """The single leader both managers agree on (polled until they do)."""
    def agreed():
        leaders = group.leaders()
        if len(leaders) != 1:
            return None
        views = [group.ha(name)["leader"]["instance_id"] for name in group.managers]
        return leaders[0] if set(views) == {leaders[0]} else None
    return wait_for("exactly one leader both managers name", agreed)


def add_host(group: ManagerGroup, leader: str, name: str, agent_url: str) -> str:
    cluster = group.api(leader, "POST", "/clusters", json={"name": f"c-{name}"})
    assert cluster.status_code == 201, cluster.text
    host = group.api(leader, "POST", "/hosts", json={"name": name, "cluster_id": cluster.json()["id"],
                                                     "agent_url": agent_url, "agent_token": NODE_TOKEN})
    assert host.status_code == 201, host.text
    return host.json()["id"]


def test_one_leader_and_the_standby_takes_over_a_killed_leader_with_its_node_agents(group, db, tmp_path):
    leader = one_leader(group)
    standby = next(n for n in group.managers if n != leader)
    before = group.ha(standby)
    assert before["epoch"] >= 1 and before["this_instance"]["role"] == "standby"
    assert {(i["instance_id"], i["alive"]) for i in before["instances"]} == {("m1", True), ("m2", True)}

    # a node agent that knows both managers, the leader first
    agent_port = free_port()
    host_id = add_host(group, leader, "node-a", f"http://127.0.0.1:{agent_port}")
    urls = f"{group.managers[leader].url},{group.managers[standby].url}"
    agent_log = tmp_path / "agent.log"
    with open(agent_log, "ab") as out:
        agent = subprocess.Popen(
            [sys.executable, "-m", "manager.cli", "node", "--name", "node-a", "--libvirt-uri", "test:///default",
             "--listen", f"127.0.0.1:{agent_port}", "--manager", urls, "--token", NODE_TOKEN,
             "--heartbeat-seconds", "0.5"], cwd=REPO, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        wait_until_answers(f"http://127.0.0.1:{agent_port}/v1/health", agent, "node agent",
                           headers={"Authorization": f"Bearer {NODE_TOKEN}"})
        wait_for("the host up through its heartbeats",
                 lambda: group.api(standby, "GET", f"/hosts/{host_id}").json()["status"] == "up")

        group.kill(leader)
        with db.connect() as conn:
            killed_at = conn.execute(text("SELECT clock_timestamp()")).scalar()

        after = wait_for("the standby leading", lambda: (h := group.ha(standby))["this_instance"]["role"] == "leader"
                         and h)
        assert after["leader"]["instance_id"] == standby and after["epoch"] == before["epoch"] + 1
        assert after["this_instance"]["epoch"] == after["epoch"]
        # new requests to the standby succeed: a write and a read
        made = group.api(standby, "POST", "/users", json={"username": "after-takeover", "password": "pw-123456789"})
        assert made.status_code == 201, made.text
        assert group.api(standby, "GET", f"/users/{made.json()['id']}").json()["username"] == "after-takeover"

        def beat_after_kill():
            with db.connect() as conn:
                return conn.execute(text("SELECT last_heartbeat_at > :t FROM hosts WHERE id = :id"),
                                    {"t": killed_at, "id": host_id}).scalar()
        wait_for("a heartbeat delivered through the standby after the kill", beat_after_kill)
        assert "now reports to " + group.managers[standby].url in agent_log.read_text()
        assert group.api(standby, "GET", f"/hosts/{host_id}").json()["status"] == "up"
        with db.connect() as conn:  # the takeover fenced no healthy host
            assert conn.execute(text("SELECT count(*) FROM events WHERE code LIKE 'host.fenc%'")).scalar() == 0
        # the agent heard the new epoch in a heartbeat reply: the former leader's commands are refused
        agent_url, auth = f"http://127.0.0.1:{agent_port}", {"Authorization": f"Bearer {NODE_TOKEN}"}
        wait_for("the agent knowing the new epoch",
                 lambda: httpx.get(f"{agent_url}/v1/health", headers=auth).json()["leader_epoch"] == after["epoch"])
        missing = "00000000-0000-4000-8000-00000000000f"
        with NodeClient(agent_url, NODE_TOKEN) as node:
            with fenced(before["epoch"]), pytest.raises(NotLeader, match=f"epoch {before['epoch']} no longer"):
                node.start(missing)
            with fenced(after["epoch"]), pytest.raises(DomainNotFound):
                node.start(missing)  # the new leader's command reaches the hypervisor
        dead = wait_for("the killed manager no longer alive", lambda: [
            i for i in group.ha(standby)["instances"] if i["instance_id"] == leader and not i["alive"]])
        assert not dead[0]["leader"]
    finally:
        kill_process_tree(agent)


class SilentAgent:
    """A TCP port that accepts connections and never answers: a node agent hung mid-request. `first` is set when
    the first connection arrives (a manager's probe is waiting on it)."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.first = threading.Event()
        self.held: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.held.append(conn)
            self.first.set()

    def close(self) -> None:
        self.sock.close()
        for conn in self.held:
            conn.close()


def test_a_paused_leader_has_its_loop_writes_refused_when_it_wakes_and_steps_down(group, db):
    leader = one_leader(group)
    standby = next(n for n in group.managers if n != leader)
    old_epoch = group.ha(leader)["this_instance"]["epoch"]
    silent = SilentAgent()
    try:
        host_id = add_host(group, leader, "node-silent", f"http://127.0.0.1:{silent.port}")
        with db.begin() as conn:  # its heartbeats stopped a minute ago: the leader's host-HA round probes it
            conn.execute(text("UPDATE hosts SET status = 'up', last_heartbeat_at = now() - interval '60 seconds' "
                              "WHERE id = :id"), {"id": host_id})
        # The leader's round is waiting on its probe of the silent agent, outside any transaction; it is frozen
        # there, before the round writes the host's new liveness.
        assert silent.first.wait(60), group.log_tail(leader)
        group.freeze(leader)

        taken = wait_for("the standby taking over from the frozen leader",
                         lambda: (h := group.ha(standby))["this_instance"]["role"] == "leader" and h)
        assert taken["epoch"] == old_epoch + 1
        group.thaw(leader)

        woke = wait_for("the former leader stepping down after a refused write",
                        lambda: (h := group.ha(leader))["this_instance"]["role"] == "standby"
                        and h["this_instance"]["refused_writes"] >= 1 and h)
        assert woke["this_instance"]["epoch"] is None and woke["leader"]["instance_id"] == standby
        log = group.log_tail(leader, 200_000)
        assert f"write refused: epoch {old_epoch} no longer holds the manager leadership" in log
        assert f"stepped down: epoch {old_epoch} was superseded by epoch {old_epoch + 1} of {standby}" in log
        assert group.leaders() == [standby]
    finally:
        silent.close()
