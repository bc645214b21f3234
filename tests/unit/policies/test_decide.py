"""The policy engine's decide function on stated worlds (pure: no database, no clock)."""
from __future__ import annotations

import datetime as dt

import pytest
from pydantic import ValidationError

from policy_engine.config import ClusterPolicies, parse
from policy_engine.decide import (BALLOON, KSM, MIGRATE, POWER_OFF, POWER_ON, SHUTDOWN, SUSPEND, DesktopSnap,
                                  HostSnap, PoolSnap, Snapshot, decide, fewest_migrations, in_off_hours)

NOON = dt.datetime(2026, 1, 5, 12, 0, tzinfo=dt.timezone.utc)
NIGHT = dt.datetime(2026, 1, 5, 23, 0, tzinfo=dt.timezone.utc)


def host(name, cpu=0.0, used=0, *, status="up", memory=16384, cpus=4, power=True, **kw):
    return HostSnap(id=name, name=name, cluster_id="c", status=status, cpus=cpus, memory_mib=memory,
                    cpu_usage=cpu, free_memory_mib=memory - used, has_power_agent=power, **kw)


def desk(name, on, cpu=0.0, mem=1024, *, cpus=1, pool=None, **kw):
    kw.setdefault("running", True)
    return DesktopSnap(id=name, name=name, host_id=on, pool_id=pool, cpus=cpus, memory_mib=mem, cpu_usage=cpu, **kw)


def policies(**parts):
    return {"c": ClusterPolicies.model_validate(parts)}


def test_nothing_enabled_decides_nothing():
    snap = Snapshot(NOON, [host("a", cpu=99), host("b")], [desk("d1", "a", cpu=100, cpus=4)])
    assert decide(snap, policies()) == []
    assert decide(snap, {}) == []


def test_load_balancing_moves_the_largest_contributor_to_the_emptiest_host():
    hosts = [host("a", cpu=95), host("b", cpu=40), host("c", cpu=10)]
    desktops = [desk("big", "a", cpu=100, cpus=2), desk("small", "a", cpu=40), desk("tiny", "a", cpu=20)]
    out = decide(Snapshot(NOON, hosts, desktops), policies(load_balancing={"enabled": True}))
    assert [(d.action, d.desktop, d.host, d.target_host) for d in out] == [(MIGRATE, "big", "a", "c")]
    assert "over its threshold" in out[0].reason
    assert fewest_migrations(hosts, desktops, ClusterPolicies.model_validate({"load_balancing": {"enabled": True}})) == 1


def test_hysteresis_band_leaves_a_host_between_target_and_threshold_alone():
    hosts = [host("a", cpu=78), host("b", cpu=0)]
    desktops = [desk("d", "a", cpu=100, cpus=2)]
    assert decide(Snapshot(NOON, hosts, desktops), policies(load_balancing={"enabled": True})) == []
    # and a target in the band takes nothing: 'b' at 75 % is above the 70 % target
    hosts = [host("a", cpu=95), host("b", cpu=75)]
    assert decide(Snapshot(NOON, hosts, [desk("d", "a", cpu=50)]), policies(load_balancing={"enabled": True})) == []


def test_migrations_are_capped_counting_those_in_flight():
    hosts = [host("a", cpu=100, cpus=1), host("b"), host("c"), host("d")]
    desktops = [desk(f"d{i}", "a", cpu=25) for i in range(4)]
    lb = {"enabled": True, "max_concurrent_migrations": 3}
    snap = Snapshot(NOON, hosts, desktops, migrations_in_flight=2)
    assert len(decide(snap, policies(load_balancing=lb))) == 1


def test_memory_pressure_and_busy_desktops():
    hosts = [host("a", used=15000), host("b", used=1000)]
    desktops = [desk("busy", "a", mem=8192, busy=True), desk("ok", "a", mem=4096)]
    out = decide(Snapshot(NOON, hosts, desktops), policies(load_balancing={"enabled": True}))
    assert [(d.desktop, d.target_host) for d in out] == [("ok", "b")]


def test_idle_desktops_per_pool():
    hosts = [host("a")]
    desktops = [desk("gone", "a", pool="p1", disconnected_minutes=45),
                desk("recent", "a", pool="p1", disconnected_minutes=5),
                desk("here", "a", pool="p1", connected=True),
                desk("other", "a", pool="p2", disconnected_minutes=500),
                desk("off", "a", pool="p3", disconnected_minutes=500, running=False),
                desk("shut", "a", pool="p3", disconnected_minutes=61)]
    rules = {"enabled": True, "pools": {"p1": {"action": "suspend", "after_minutes": 30},
                                        "p3": {"action": "shutdown", "after_minutes": 60}}}
    out = decide(Snapshot(NOON, hosts, desktops), policies(idle_desktops=rules))
    assert [(d.action, d.desktop) for d in out] == [(SUSPEND, "gone"), (SHUTDOWN, "shut")]
    assert "45 min" in out[0].reason


def test_power_saving_empties_the_emptiest_idle_host_then_powers_it_off():
    ps = {"enabled": True, "min_free_memory_percent": 10}
    hosts = [host("a", cpu=5, used=4096), host("b", cpu=2, used=1024), host("c", power=False)]
    desktops = [desk("d1", "a", cpu=2), desk("d2", "a", cpu=2), desk("x", "b", cpu=1)]
    out = decide(Snapshot(NIGHT, hosts, desktops), policies(power_saving=ps))
    # 'c' is empty but has no power agent; 'b' has one idle desktop: it moves to the fullest host
    assert [(d.action, d.desktop, d.host, d.target_host) for d in out] == [(MIGRATE, "x", "b", "a")]
    # next round, b is empty: standby
    hosts = [host("a", cpu=5, used=5120), host("b"), host("c", power=False)]
    desktops = [desk("d1", "a", cpu=2), desk("d2", "a", cpu=2), desk("x", "a", cpu=1)]
    out = decide(Snapshot(NIGHT, hosts, desktops), policies(power_saving=ps))
    assert [(d.action, d.host) for d in out] == [(POWER_OFF, "b")]
    # during the day nothing is packed
    assert decide(Snapshot(NOON, hosts, desktops), policies(power_saving=ps)) == []


def test_power_saving_keeps_busy_hosts_and_the_reserve():
    ps = {"enabled": True, "min_free_memory_percent": 50}
    hosts = [host("a", used=12000), host("b", used=2048)]
    desktops = [desk("d1", "a", cpu=2, mem=12000), desk("x", "b", cpu=2, mem=2048)]
    assert decide(Snapshot(NIGHT, hosts, desktops), policies(power_saving=ps)) == []  # 50 % reserve
    ps["min_free_memory_percent"] = 10
    desktops[1].cpu_usage = 60  # busy: b stays, a is too full to leave
    assert decide(Snapshot(NIGHT, hosts, desktops), policies(power_saving=ps)) == []


def test_hosts_wake_before_a_window_when_capacity_runs_low_and_after_off_hours():
    ps = {"enabled": True, "wake_before_minutes": 30, "min_free_memory_percent": 20}
    standby = host("s", status="standby", powered_off_by_policy=True)
    hosts = [host("a", used=2000), standby]
    pool = PoolSnap("p", "morning", "c", next_window_opens=NIGHT + dt.timedelta(minutes=20))
    out = decide(Snapshot(NIGHT, hosts, [], [pool]), policies(power_saving=ps))
    assert [(d.action, d.host) for d in out] == [(POWER_ON, "s")]
    assert "morning" in out[0].reason
    pool.next_window_opens = NIGHT + dt.timedelta(hours=3)
    assert decide(Snapshot(NIGHT, hosts, [], [pool]), policies(power_saving=ps)) == []
    hosts[0] = host("a", used=15000)  # under the reserve
    out = decide(Snapshot(NIGHT, hosts, [], [pool]), policies(power_saving=ps))
    assert [d.action for d in out] == [POWER_ON] and "reserve" in out[0].reason
    hosts[0] = host("a", used=2000)
    assert [d.action for d in decide(Snapshot(NOON, hosts, [], [pool]), policies(power_saving=ps))] == [POWER_ON]
    # a host in standby for another reason (not ours) is never powered on
    hosts[1] = host("s", status="standby")
    assert decide(Snapshot(NOON, hosts, [], [pool]), policies(power_saving=ps)) == []


def test_off_hours_across_midnight():
    config = ClusterPolicies.model_validate({"power_saving": {"off_hours_start": "20:00", "off_hours_end": "07:00"}})
    assert in_off_hours(config, NIGHT) and not in_off_hours(config, NOON)
    assert in_off_hours(config, NOON.replace(hour=6, minute=59)) and not in_off_hours(config, NOON.replace(hour=7))


def test_memory_density_ksm_and_balloons():
    md = {"ksm_enabled": True, "ksm_pages_to_scan": 500, "balloon_enabled": True, "balloon_idle_minutes": 10,
          "balloon_reclaim_percent": 50, "balloon_min_mib": 256}
    wanted = {"run": 1, "pages_to_scan": 500, "sleep_millisecs": 20, "merge_across_nodes": 1}
    hosts = [host("a"), host("b", ksm_applied=wanted), host("down", status="non_responsive")]
    desktops = [desk("idle", "a", mem=2048, disconnected_minutes=11),
                desk("done", "a", mem=2048, disconnected_minutes=60, balloon_mib=1024),
                desk("back", "a", mem=2048, connected=True, balloon_mib=1024),
                desk("fresh", "a", mem=2048, disconnected_minutes=3)]
    out = decide(Snapshot(NOON, hosts, desktops), policies(memory_density=md))
    assert [(d.action, d.host or d.desktop, d.params) for d in out] == [
        (KSM, "a", wanted), (BALLOON, "idle", {"memory_mib": 1024}), (BALLOON, "back", {"memory_mib": 2048})]


@pytest.mark.parametrize("bad", [
    {"load_balancing": {"cpu_high_percent": 120}},
    {"load_balancing": {"cpu_high_percent": 20, "hysteresis_percent": 30}},
    {"power_saving": {"off_hours_start": "25:00"}},
    {"idle_desktops": {"pools": {"p": {"action": "hibernate"}}}},
    {"nonsense": {}},
])
def test_bad_configurations_are_refused(bad):
    with pytest.raises(ValidationError):
        ClusterPolicies.model_validate(bad)


def test_stored_text_round_trips():
    config = ClusterPolicies.model_validate({"load_balancing": {"enabled": True, "cpu_high_percent": 60}})
    assert parse(config.model_dump_json()) == config
    assert parse(None) == ClusterPolicies()
