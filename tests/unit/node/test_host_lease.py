"""The host's storage lease and self-fencing (hypervisor_node.host_lease), on libvirt's test driver: the lease file
on disk, the rule (both the lease and the managers lost for self_fence_after_s), the guests powered off."""
from __future__ import annotations

import json

import pytest

from core.errors import Invalid
from hypervisor_node.host_lease import HostLease


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def running(driver) -> set[str]:
    return {d.name for d in driver.list_domains() if d.state != "down"}


def test_each_renewal_writes_the_next_counter_and_a_restarted_agent_carries_on(driver, tmp_path):
    leases = tmp_path / "leases"
    leases.mkdir()
    lease = HostLease(driver, "host1", leases, renew_s=1, ttl_s=8, self_fence_after_s=4)
    lease.renew()
    lease.renew()
    record = json.loads((leases / "host1.lease").read_text())
    assert (record["host"], record["counter"], record["ttl_seconds"], record["self_fence_after_seconds"]) == \
        ("host1", 2, 8, 4)
    again = HostLease(driver, "host1", leases, renew_s=1, ttl_s=8, self_fence_after_s=4)
    again.renew()
    assert json.loads((leases / "host1.lease").read_text())["counter"] == 3  # a change, not a reset
    assert [p.name for p in leases.iterdir()] == ["host1.lease"]  # no temporary file left behind


def test_the_timings_must_leave_the_guests_time_to_stop_before_the_lease_runs_out(driver, tmp_path):
    for renew, after, ttl in ((1, 8, 8), (1, 9, 8), (4, 4, 8), (0, 4, 8)):
        with pytest.raises(Invalid):
            HostLease(driver, "h", tmp_path, renew_s=renew, ttl_s=ttl, self_fence_after_s=after)
    assert HostLease(driver, "h", tmp_path, renew_s=1, ttl_s=20).self_fence_after_s == 10  # half the ttl


def test_a_host_that_lost_both_its_lease_and_the_managers_powers_its_guests_off(driver, make_spec, tmp_path):
    clock, contact = Clock(), {"at": None}
    lease = HostLease(driver, "host1", tmp_path / "leases", renew_s=1, ttl_s=8, self_fence_after_s=4,
                      manager_contact=lambda: contact["at"], clock=clock)
    for name in ("a", "b", "c"):
        spec = make_spec(name=name)
        driver.define(spec)
        if name != "c":
            driver.start(spec.uuid)
    (tmp_path / "leases").mkdir()
    lease.renew()
    contact["at"] = clock.now

    clock.now += 10  # the managers are gone, the lease is renewed: the host keeps its guests
    lease.renew()
    assert lease.check() == [] and running(driver) == {"a", "b"}
    clock.now += 8  # and the other way round: no renewal for 8 s, but a manager heard a heartbeat 1 s ago
    contact["at"] = clock.now - 1
    assert lease.check() == [] and running(driver) == {"a", "b"}

    (tmp_path / "leases").rename(tmp_path / "gone")  # the storage goes away: renewals fail
    contact["at"] = clock.now  # and then the managers (the last heartbeat heard now)
    with pytest.raises(OSError):
        lease.renew()
    lease.start_renewal()
    clock.now += 3.9  # the heartbeats were heard 3.9 s ago: not yet
    assert lease.check() == [] and running(driver) == {"a", "b"}
    clock.now += 0.1
    assert sorted(lease.check()) == ["a", "b"] and running(driver) == set()
    assert sorted(lease.unreported["guests"]) == ["a", "b"]
    assert lease.unreported["lease_age_seconds"] >= 4 and lease.unreported["ttl_seconds"] == 8

    report = lease.unreported
    contact["at"] = clock.now  # a manager answers again: the episode is over, the guests stay off
    assert lease.check() == [] and lease.self_fenced == [] and running(driver) == set()
    lease.delivered(report)
    assert lease.unreported is None


def test_an_agent_with_no_manager_fences_on_its_lease_alone(driver, make_spec, tmp_path):
    clock = Clock()
    lease = HostLease(driver, "host1", tmp_path / "missing", renew_s=1, ttl_s=8, self_fence_after_s=4, clock=clock)
    spec = make_spec(name="a")
    driver.define(spec)
    driver.start(spec.uuid)
    assert lease.check() == []
    clock.now += 4  # never renewed since the agent started
    assert lease.check() == ["a"]


def test_a_host_that_lost_the_managers_releases_its_guests_only_when_a_manager_asks(driver, make_spec, tmp_path):
    clock, contact = Clock(), {"at": None}
    leases = tmp_path / "leases"
    leases.mkdir()
    lease = HostLease(driver, "host1", leases, renew_s=1, ttl_s=8, self_fence_after_s=4,
                      manager_contact=lambda: contact["at"], clock=clock)
    spec = make_spec(name="a")
    driver.define(spec)
    driver.start(spec.uuid)
    (leases / "host1.release").write_text(json.dumps({"host": "host1", "counter": -100}))  # a stale request
    lease.renew()
    contact["at"] = clock.now
    clock.now += 10  # no manager for 10 s, the lease renewing: a stale request says nothing
    lease.renew()
    assert lease.check() == [] and running(driver) == {"a"}

    (leases / "host1.release").write_text(json.dumps({"host": "host1", "counter": lease.counter}))
    lease.renew()  # read at the next renewal
    contact["at"] = clock.now - 1  # a manager still hears it: nothing
    assert lease.check() == [] and running(driver) == {"a"}
    contact["at"] = clock.now - 4  # no manager for the self-fence time, and a fresh request: released
    assert lease.check() == ["a"] and running(driver) == set()
    assert lease.unreported["on_request"] is True
    lease.renew()
    assert json.loads((leases / "host1.lease").read_text())["released"] is True

    for _ in range(9):  # the request grows old by the lease's own counter (no clock), not by time
        lease.renew()
    assert not lease.release_requested()
    contact["at"] = clock.now  # a manager answers again: no longer released
    assert lease.check() == []
    lease.renew()
    assert json.loads((leases / "host1.lease").read_text())["released"] is False
