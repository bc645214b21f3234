"""Host failover rounds on the real database: liveness and its events, the guards, fencing's outcome and what it
does to the failed host's desktops. Heartbeat ages are set in the rows; the agents' probe and the fence agents are
the process boundary here (the real ones: tests/integration/ha/test_fence_agents.py and test_host_failure.py)."""
from __future__ import annotations

import datetime as dt
import json

import pytest
from sqlalchemy import select, update

from core.enums import HostStatus, PowerState, Severity
from ha_manager import fencing
from ha_manager.failover import HostFailover, host_states, set_fence_agents
from ha_manager.host_leases import LeaseWatch
from manager import db
from manager.config import Settings, get_settings
from manager.models import (Cluster, Desktop, Event, FenceAgent, HaRestart, Host, HostHaState, Template,
                            TemplateVersion, User, Volume, utcnow)

pytestmark = pytest.mark.postgres


class World:
    def __init__(self, hosts=("h1", "h2"), free_mib=4096):
        self.fenced: list[list[str]] = []
        self.fence_ok = True
        self.probe_ok: dict[str, bool] = {}
        with db.session_scope() as session:
            cluster = Cluster(name="c")
            session.add(cluster)
            session.flush()
            self.hosts = {}
            for name in hosts:
                host = Host(name=name, cluster_id=cluster.id, agent_url=f"http://{name}.invalid:8470",
                            agent_token=f"token-{name}", status=HostStatus.UP, memory_mib=8192,
                            free_memory_mib=free_mib, last_heartbeat_at=utcnow())
                session.add(host)
                session.flush()
                self.hosts[name] = host.id
            template = Template(name="t", memory_mib=256)
            session.add(template)
            session.flush()
            version = TemplateVersion(template_id=template.id, number=1)
            session.add(version)
            user = User(username="ann", domain="local", display_name="Ann")
            session.add(user)
            session.flush()
            self.version_id, self.user_id = version.id, user.id
        self.failover = HostFailover(Settings(ha_fence_retry_seconds=3600), probe=lambda h: self.probe_ok.get(h, False),
                                     fence=self._fence)
        with db.session_scope() as session:
            for name, host_id in self.hosts.items():
                set_fence_agents(session, host_id, [{"kind": "ipmi", "address": f"bmc-{name}", "username": "u",
                                                     "password": "p"}], actor="test")

    def _fence(self, configs, timeout):
        self.fenced.append([c.address for c in configs])
        assert configs[0].password == "p"  # opened from its seal
        if self.fence_ok:
            return fencing.FenceOutcome(True, configs[0].address, "powered off", 0.1)
        return fencing.FenceOutcome(False, detail="the BMC refused")

    def desktop(self, name, host, *, ha=False, priority=0, assigned=False, state=PowerState.UP, memory=256):
        with db.session_scope() as session:
            desktop = Desktop(name=name, template_version_id=self.version_id, host_id=self.hosts[host],
                              memory_mib=memory, ha_enabled=ha, ha_priority=priority, power_state=state,
                              assigned_user_id=self.user_id if assigned else None)
            session.add(desktop)
            session.flush()
            volume = Volume(path=f"/srv/{name}.qcow2", desktop_id=desktop.id)
            session.add(volume)
            session.flush()
            desktop.volume_id = volume.id
            return desktop.id

    def silent(self, name, seconds):
        with db.session_scope() as session:
            session.execute(update(Host).where(Host.id == self.hosts[name]).values(
                last_heartbeat_at=utcnow() - dt.timedelta(seconds=seconds)))

    def state(self, name):
        with db.session_scope() as session:
            row = session.get(HostHaState, self.hosts[name])
            return row.liveness, row.fence_state

    def events(self, code):
        with db.session_scope() as session:
            return list(session.scalars(select(Event).where(Event.code == code).order_by(Event.id)))


@pytest.fixture
def world(clean_db):
    return World()


def test_late_heartbeats_are_suspected_and_a_restarted_agent_is_no_failure(world):
    world.failover.run_cycle()
    assert world.state("h1") == ("up", "")
    world.silent("h1", 8)
    world.failover.run_cycle()
    assert world.state("h1") == ("connecting", "")
    assert [e.severity for e in world.events("host.suspected")] == [Severity.WARNING]
    world.silent("h1", 0)  # the agent restarted: heartbeats resume, its guests kept running
    world.failover.run_cycle()
    assert world.state("h1") == ("up", "")
    assert world.fenced == [] and world.events("host.non_responsive") == []
    assert len(world.events("host.recovered")) == 1


def test_a_host_answering_its_probe_is_not_failed(world):
    world.silent("h1", 60)
    world.probe_ok[world.hosts["h1"]] = True
    world.failover.run_cycle()
    world.failover.run_cycle()
    assert world.state("h1") == ("connecting", "") and world.fenced == []


def test_a_failed_host_is_fenced_then_its_ha_desktops_queued(world):
    ha = world.desktop("ha-low", "h1", ha=True, priority=1)
    held = world.desktop("held", "h1", assigned=True)
    idle = world.desktop("idle", "h1")
    off = world.desktop("off", "h1", ha=True, state=PowerState.DOWN)
    world.silent("h1", 20)
    with db.session_scope() as session:  # no room anywhere: the queue waits and the admin is told, once
        session.execute(update(Host).values(free_memory_mib=0))
    world.failover.run_cycle()
    assert world.fenced == [["bmc-h1"]]
    assert world.state("h1") == ("non_responsive", "fenced")
    [alert] = world.events("host.non_responsive")
    assert alert.severity == Severity.ALERT and alert.host_id == world.hosts["h1"]
    assert [e.code for e in world.events("host.fence_started")] == ["host.fence_started"]
    [fenced] = world.events("host.fenced")
    assert "(ha-low, held)" in fenced.message and "left down: idle" in fenced.message
    with db.session_scope() as session:
        assert set(session.scalars(select(HaRestart.desktop_id))) == {ha, held}
        states = dict(session.execute(select(Desktop.id, Desktop.power_state)).all())
        assert {states[i] for i in (ha, held, idle, off)} == {PowerState.DOWN}
        assert session.get(Host, world.hosts["h1"]).status == HostStatus.DOWN
    waiting = world.events("desktop.ha_waiting")
    assert {e.desktop_id for e in waiting} == {ha, held} and {e.severity for e in waiting} == {Severity.ALERT}
    world.failover.run_cycle()
    assert world.fenced == [["bmc-h1"]], "a fenced host is fenced once"
    assert len(world.events("desktop.ha_waiting")) == 2, "the admin is told once per desktop"
    with db.session_scope() as session:
        status = {h["name"]: h for h in host_states(session)}
    assert (status["h1"]["liveness"], status["h1"]["fence_state"]) == ("non_responsive", "fenced")
    assert status["h1"]["fence_agents"] == ["ipmi bmc-h1"] and status["h2"]["liveness"] == "up"


def test_a_failed_fence_restarts_nothing(world):
    world.desktop("ha", "h1", ha=True)
    world.fence_ok = False
    world.silent("h1", 20)
    world.failover.run_cycle()
    assert world.state("h1") == ("non_responsive", "failed")
    [failed] = world.events("host.fence_failed")
    assert failed.severity == Severity.ALERT and "NOT restarted" in failed.message
    with db.session_scope() as session:
        assert session.scalars(select(HaRestart)).all() == []
        assert session.scalar(select(Desktop.power_state)) == PowerState.UP  # it may still run there
    world.failover.run_cycle()
    assert len(world.fenced) == 1, "retried only after VDI_HA_FENCE_RETRY_SECONDS"


def test_a_fence_left_unfinished_by_a_dead_manager_is_taken_up_again(world):
    world.silent("h1", 20)
    with db.session_scope() as session:
        session.add(HostHaState(host_id=world.hosts["h1"], liveness="non_responsive", fence_state="fencing",
                                fence_changed_at=utcnow() - dt.timedelta(seconds=30)))
    world.failover.run_cycle()
    assert world.fenced == [], "not before VDI_HA_FENCE_RETRY_SECONDS"
    with db.session_scope() as session:
        session.execute(update(HostHaState).values(fence_changed_at=utcnow() - dt.timedelta(hours=2)))
    world.failover.run_cycle()
    assert world.fenced == [["bmc-h1"]] and world.state("h1") == ("non_responsive", "fenced")


def test_half_the_hosts_unreachable_at_once_fences_nobody(world):
    world.desktop("ha", "h1", ha=True)
    world.silent("h1", 20)
    world.silent("h2", 20)
    world.failover.run_cycle()
    world.failover.run_cycle()
    assert world.fenced == []
    assert world.state("h1") == ("non_responsive", "skipped") and world.state("h2")[1] == "skipped"
    [skipped] = world.events("ha.fencing_skipped")
    assert skipped.severity == Severity.ALERT and "2 of 2 hosts" in skipped.message and "network" in skipped.message
    world.silent("h2", 0)  # h2 answers again: h1 alone is unreachable now, a host failure
    world.failover.run_cycle()
    assert world.fenced == [["bmc-h1"]]


def test_hosts_cut_off_together_but_judged_in_different_rounds_make_one_event(world):
    world.silent("h1", 20)
    world.silent("h2", 8)  # late, not yet VDI_HA_NON_RESPONSIVE_AFTER_SECONDS: connecting
    world.failover.run_cycle()
    assert world.state("h1") == ("non_responsive", "skipped") and world.state("h2") == ("connecting", "")
    world.silent("h2", 20)
    world.failover.run_cycle()
    assert world.state("h2") == ("non_responsive", "skipped") and world.fenced == []
    [skipped] = world.events("ha.fencing_skipped")
    assert "2 of 2 hosts" in skipped.message


def test_a_host_in_maintenance_is_not_judged(world):
    with db.session_scope() as session:
        session.execute(update(Host).where(Host.id == world.hosts["h1"]).values(status=HostStatus.MAINTENANCE))
    world.silent("h1", 600)
    world.failover.run_cycle()
    assert world.state("h1") == ("up", "") and world.fenced == []


def test_fence_agents_api(client, clean_db):
    cluster = client.post("/api/v1/clusters", json={"name": "c"}).json()
    host = client.post("/api/v1/hosts", json={"name": "h", "cluster_id": cluster["id"]}).json()
    url = f"/api/v1/hosts/{host['id']}/fence-agents"
    body = {"agents": [{"kind": "ipmi", "address": "10.0.0.5", "username": "root", "password": "calvin"},
                       {"kind": "redfish", "address": "10.0.0.6", "username": "root", "password": "calvin",
                        "options": {"verify_tls": False}}]}
    put = client.put(url, json=body)
    assert put.status_code == 200, put.text
    assert [(a["kind"], a["port"], a["password_set"]) for a in put.json()] == [("ipmi", 0, True), ("redfish", 0, True)]
    assert "calvin" not in client.get(url).text
    with db.session_scope() as session:
        assert all("calvin" not in a.password_sealed for a in session.scalars(select(FenceAgent)))
    bad = client.put(url, json={"agents": [{"kind": "telnet", "address": "x"}]})
    assert bad.status_code == 422 and "telnet" in bad.json()["detail"]
    assert client.put("/api/v1/hosts/nope/fence-agents", json={"agents": []}).status_code == 404
    ha = client.get("/api/v1/ha")
    assert ha.status_code == 200, ha.text
    [shown] = ha.json()["hosts"]
    assert (shown["name"], shown["liveness"], shown["fence_agents"]) == ("h", "up", ["ipmi 10.0.0.5", "redfish 10.0.0.6"])
    assert ha.json()["ha_restarts"] == []
    assert client.put(url, json={"agents": []}).json() == []


# ---- the guard: no fencing while the host still renews its storage lease ----------------------------------------
class Clock:
    def __init__(self) -> None:
        self.now = 500.0

    def __call__(self) -> float:
        return self.now


def renew(directory, host: str, counter: int, released: bool = False) -> None:
    """A lease record as hypervisor_node.host_lease writes it."""
    (directory / f"{host}.lease").write_text(json.dumps({"host": host, "counter": counter, "ttl_seconds": 8,
                                                         "renew_seconds": 1, "released": released}))


@pytest.fixture
def leased(world, tmp_path):
    """The world's manager reads the hosts' leases in tmp_path, on a clock of the test's."""
    clock = Clock()
    world.failover.leases = LeaseWatch(str(tmp_path), margin_s=2.0, clock=clock)
    renew(tmp_path, "h2", 1)
    return world, tmp_path, clock


def test_a_host_that_still_renews_its_lease_is_not_fenced_and_its_desktops_move_once_it_released_them(leased):
    world, leases, clock = leased
    ha = world.desktop("ha", "h1", ha=True)
    renew(leases, "h1", 10)
    world.silent("h1", 20)
    world.failover.run_cycle()
    assert world.fenced == [] and world.state("h1") == ("non_responsive", "releasing")
    [skipped] = world.events("host.fence_skipped")
    assert "still renews its storage lease" in skipped.message and "asked to release" in skipped.message
    assert json.loads((leases / "h1.release").read_text()) == {"host": "h1", "counter": 10}

    for counter in (11, 12, 13):  # it keeps renewing without saying released: its desktops wait where they are
        clock.now += 1
        renew(leases, "h1", counter)
        world.failover.run_cycle()
    assert world.fenced == [] and world.state("h1") == ("non_responsive", "releasing")
    assert len(world.events("host.fence_skipped")) == 1, "said once"
    assert json.loads((leases / "h1.release").read_text())["counter"] == 13  # the request kept fresh
    with db.session_scope() as session:
        assert session.scalars(select(HaRestart)).all() == []
        assert session.get(Desktop, ha).power_state == PowerState.UP

    clock.now += 1
    renew(leases, "h1", 14, released=True)
    world.failover.run_cycle()
    assert world.fenced == [] and world.state("h1") == ("non_responsive", "released")
    [released] = world.events("host.guests_released")
    assert released.severity == Severity.ALERT and "(ha)" in released.message
    with db.session_scope() as session:
        assert set(session.scalars(select(HaRestart.desktop_id))) == {ha}
        assert session.get(Host, world.hosts["h1"]).status == HostStatus.DOWN
    clock.now += 1
    renew(leases, "h1", 15, released=True)
    world.failover.run_cycle()
    assert len(world.events("host.guests_released")) == 1 and world.fenced == [], "taken over once"


def test_a_host_whose_lease_no_longer_renews_is_fenced_as_before(leased):
    world, leases, clock = leased
    renew(leases, "h1", 10)
    world.failover.leases.observe(["h1", "h2"])
    clock.now += 3  # three renewal periods without a move: dead, frozen or cut off the storage too
    renew(leases, "h2", 2)
    world.silent("h1", 20)
    world.failover.run_cycle()
    assert world.fenced == [["bmc-h1"]] and world.state("h1") == ("non_responsive", "fenced")
    assert world.events("host.fence_skipped") == [] and not (leases / "h1.release").exists()


def test_a_held_host_whose_lease_stops_renewing_is_fenced(leased):
    world, leases, clock = leased
    renew(leases, "h1", 10)
    world.silent("h1", 20)
    world.failover.run_cycle()
    assert world.state("h1") == ("non_responsive", "releasing")
    clock.now += 3  # it died after it was held
    world.failover.run_cycle()
    assert world.fenced == [["bmc-h1"]] and world.state("h1") == ("non_responsive", "fenced")


def test_the_ha_status_shows_each_hosts_lease(leased, monkeypatch):
    world, leases, _clock = leased
    renew(leases, "h1", 7, released=True)
    monkeypatch.setenv("VDI_HA_HOST_LEASE_DIR", str(leases))
    get_settings.cache_clear()
    try:
        with db.session_scope() as session:
            shown = {h["name"]: h["storage_lease"] for h in host_states(session)}
    finally:
        monkeypatch.delenv("VDI_HA_HOST_LEASE_DIR")
        get_settings.cache_clear()
    assert shown["h1"] == {"readable": True, "counter": 7, "ttl_seconds": 8, "renew_seconds": 1, "released": True}
    assert shown["h2"]["counter"] == 1
    with db.session_scope() as session:
        assert {h["storage_lease"] for h in host_states(session)} == {None}  # leases not read
