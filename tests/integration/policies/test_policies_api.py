"""The policy engine through the API on a real database: per-cluster policies (validated, 4xx on bad input), the
snapshot a round reads (disconnections, calendar windows) and POST /policies/run, dry or not."""
from __future__ import annotations

import datetime as dt

import pytest
from sqlalchemy import select

from core.enums import HostStatus, PoolType, PowerState, SessionState
from manager import db
from manager.models import (Cluster, Desktop, DesktopSession, Event, FenceAgent, Host, PolicyBalloon, Pool, Template,
                            User, utcnow)

API = "/api/v1"


@pytest.fixture(autouse=True)
def no_leader_rounds(monkeypatch):
    """Rounds only when a test asks for one: the leader's own loop would act on the worlds stated here."""
    monkeypatch.setenv("VDI_POLICY_SECONDS", "86400")


def _world(cpu_a: int = 95) -> dict[str, str]:
    with db.session_scope() as s:
        cluster, other = Cluster(name="c1"), Cluster(name="c2")
        s.add_all([cluster, other])
        s.flush()
        ids = {"cluster": cluster.id, "other": other.id}
        for name, cpu in (("hA", cpu_a), ("hB", 10)):
            host = Host(name=name, cluster_id=cluster.id, status=HostStatus.UP, cpus=4, memory_mib=16384,
                        free_memory_mib=12000, cpu_usage=cpu, agent_url="http://127.0.0.1:9", libvirt_uri="test:///x")
            s.add(host)
            s.flush()
            ids[name] = host.id
        s.add(FenceAgent(host_id=ids["hB"], kind="ipmi", address="127.0.0.1"))
        template = Template(name="t")
        s.add(template)
        s.flush()
        pool = Pool(name="p1", template_id=template.id, cluster_id=cluster.id, pool_type=PoolType.TIME_BASED,
                    schedule=[{"days": ["mon"], "start": "08:00", "end": "18:00"}], time_zone="UTC")
        foreign = Pool(name="p2", template_id=template.id, cluster_id=other.id)
        s.add_all([pool, foreign])
        s.flush()
        ids["pool"], ids["foreign_pool"] = pool.id, foreign.id
        for name, cpu in (("busy", 100), ("calm", 5)):
            desktop = Desktop(name=name, host_id=ids["hA"], pool_id=pool.id, power_state=PowerState.UP, cpus=2,
                              memory_mib=1024, cpu_usage=cpu)
            s.add(desktop)
            s.flush()
            ids[name] = desktop.id
        user = User(username="u", domain="local")
        s.add(user)
        s.flush()
        s.add(DesktopSession(desktop_id=ids["calm"], user_id=user.id, state=SessionState.DISCONNECTED,
                             disconnected_at=utcnow() - dt.timedelta(minutes=40)))
    return ids


def test_policies_are_validated_stored_and_read(client):
    ids = _world()
    url = f"{API}/clusters/{ids['cluster']}/policies"
    assert client.get(url).json()["load_balancing"]["enabled"] is False  # never set: every policy off
    for bad in ({"load_balancing": {"cpu_high_percent": 0}}, {"power_saving": {"off_hours_end": "7am"}},
                {"load_balancing": {"surprise": 1}}, {"idle_desktops": {"pools": {ids["pool"]: {"action": "x"}}}}):
        answer = client.put(url, json=bad)
        assert answer.status_code == 422, (bad, answer.text)
    answer = client.put(url, json={"idle_desktops": {"enabled": True, "pools": {"nope": {}}}})
    assert answer.status_code == 422 and "nope" in answer.json()["detail"], answer.text
    answer = client.put(url, json={"idle_desktops": {"enabled": True, "pools": {ids["foreign_pool"]: {}}}})
    assert answer.status_code == 422 and "another cluster" in answer.json()["detail"], answer.text
    assert client.get(f"{API}/clusters/nope/policies").status_code == 404
    good = {"load_balancing": {"enabled": True, "cpu_high_percent": 70},
            "idle_desktops": {"enabled": True, "pools": {ids["pool"]: {"action": "shutdown", "after_minutes": 30}}}}
    answer = client.put(url, json=good)
    assert answer.status_code == 200, answer.text
    stored = client.get(url).json()
    assert stored["load_balancing"]["cpu_high_percent"] == 70
    assert stored["idle_desktops"]["pools"][ids["pool"]] == {"action": "shutdown", "after_minutes": 30}
    with db.session_scope() as s:
        assert s.scalar(select(Event.message).where(Event.code == "policy.configured")).startswith("admin")


def test_a_dry_run_decides_and_changes_nothing(client):
    ids = _world()
    client.put(f"{API}/clusters/{ids['cluster']}/policies", json={
        "load_balancing": {"enabled": True},
        "idle_desktops": {"enabled": True, "pools": {ids["pool"]: {"action": "suspend", "after_minutes": 30}}}})
    answer = client.post(f"{API}/policies/run", json={"dry_run": True, "cluster": ids["cluster"]})
    assert answer.status_code == 200, answer.text
    decisions = answer.json()["decisions"]
    assert [(d["policy"], d["action"], d["desktop"]) for d in decisions] == [
        ("idle_desktops", "suspend", "calm"), ("load_balancing", "migrate", "busy")], decisions
    assert decisions[1]["target_host"] == "hB" and "over its threshold" in decisions[1]["reason"]
    assert "40 min" in decisions[0]["reason"]
    assert answer.json()["jobs"] == []
    with db.session_scope() as s:
        assert s.scalar(select(Event.id).where(Event.code.like("policy.%"), Event.code != "policy.configured")) \
            is None
        assert {d.task_state for d in s.scalars(select(Desktop))} == {None}
    # the whole installation when no cluster is named; 404 for an unknown one; a bad body is a 422
    assert len(client.post(f"{API}/policies/run", json={"dry_run": True}).json()["decisions"]) == 2
    assert client.post(f"{API}/policies/run", json={"dry_run": True, "cluster": "nope"}).status_code == 404
    assert client.post(f"{API}/policies/run", json={"dry_run": "maybe"}).status_code == 422


def test_a_real_run_queues_jobs_and_records_each_decision_with_its_reason(client):
    ids = _world()
    client.put(f"{API}/clusters/{ids['cluster']}/policies", json={"load_balancing": {"enabled": True}})
    answer = client.post(f"{API}/policies/run", json={"dry_run": False, "cluster": ids["cluster"]})
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert len(body["jobs"]) == 1 and body["failed"] == []
    with db.session_scope() as s:
        event = s.scalars(select(Event).where(Event.code == "policy.decision")).one()
        assert event.desktop_id == ids["busy"] and event.job_id == body["jobs"][0]
        assert "load_balancing" in event.message and "over its threshold" in event.message


def test_the_snapshot_reads_disconnections_and_calendar_windows(client):
    from policy_engine import service

    ids = _world()
    monday_7 = dt.datetime(2026, 1, 5, 7, 0, tzinfo=dt.timezone.utc)  # a Monday
    with db.session_scope() as s:
        snap = service.snapshot(s, ids["cluster"], now=utcnow())
        pool = s.get(Pool, ids["pool"])
        assert service.next_window_opens(pool, monday_7) == monday_7.replace(hour=8)
        pool.schedule, pool.window_start = [], monday_7 + dt.timedelta(hours=3)
        assert service.next_window_opens(pool, monday_7) == monday_7.replace(hour=10)
    calm = next(d for d in snap.desktops if d.name == "calm")
    assert 39 < calm.disconnected_minutes < 45 and not calm.connected
    assert next(d for d in snap.desktops if d.name == "busy").disconnected_minutes is None
    assert {h.name: h.has_power_agent for h in snap.hosts} == {"hA": False, "hB": True}
    # a balloon target set before the guest's last boot no longer holds: the boot gave it its whole memory back
    with db.session_scope() as s:
        now = utcnow()
        s.get(Desktop, ids["busy"]).started_at = now - dt.timedelta(minutes=5)
        s.get(Desktop, ids["calm"]).started_at = now - dt.timedelta(hours=2)
        s.add_all([PolicyBalloon(desktop_id=ids["busy"], target_mib=512, set_at=now - dt.timedelta(hours=1)),
                   PolicyBalloon(desktop_id=ids["calm"], target_mib=512, set_at=now - dt.timedelta(hours=1))])
    with db.session_scope() as s:
        balloons = {d.name: d.balloon_mib for d in service.snapshot(s, ids["cluster"]).desktops}
    assert balloons == {"busy": None, "calm": 512}
