"""The manager's reading of the hosts' storage leases (ha_manager.host_leases): files written as the agents write
them (hypervisor_node.host_lease), the manager's own clock injected."""
from __future__ import annotations

import json

from ha_manager.host_leases import LeaseWatch


class Clock:
    def __init__(self) -> None:
        self.now = 500.0

    def __call__(self) -> float:
        return self.now


def write(directory, host: str, counter: int, ttl: float = 8.0) -> None:
    (directory / f"{host}.lease").write_text(json.dumps({"host": host, "counter": counter, "ttl_seconds": ttl}))


def test_a_lease_expires_once_its_counter_and_the_heartbeats_were_silent_for_ttl_plus_margin(tmp_path):
    clock = Clock()
    watch = LeaseWatch(str(tmp_path), margin_s=2.0, clock=clock)
    write(tmp_path, "host1", 41)
    watch.observe(["host1"])
    for _ in range(5):  # renewed every second: never expires, however old the heartbeats
        clock.now += 1
        write(tmp_path, "host1", 42 + _)
        watch.observe(["host1"])
        assert not watch.verdict("host1", heartbeat_age=60).expired
    clock.now += 9.9  # silent 9.9 s < 8 + 2
    watch.observe(["host1"])
    verdict = watch.verdict("host1", heartbeat_age=60)
    assert verdict.known and not verdict.expired and 0 < verdict.remaining_s <= 0.11
    clock.now += 0.1
    watch.observe(["host1"])
    assert not watch.verdict("host1", heartbeat_age=9).expired  # a heartbeat 9 s ago: not yet
    verdict = watch.verdict("host1", heartbeat_age=10)
    assert verdict.expired and verdict.remaining_s == 0 and verdict.silent_s == 10 and verdict.ttl_s == 8


def test_a_lease_this_manager_cannot_read_never_expires(tmp_path):
    clock = Clock()
    watch = LeaseWatch(str(tmp_path), margin_s=2.0, clock=clock)
    assert not watch.verdict("host1", heartbeat_age=600).known  # never read: nothing is known
    write(tmp_path, "host1", 1)
    watch.observe(["host1"])
    (tmp_path / "host1.lease").unlink()  # the storage fails on the manager's side
    clock.now += 600
    watch.observe(["host1"])
    assert not watch.verdict("host1", heartbeat_age=600).expired
    (tmp_path / "host1.lease").write_text("{not json")
    watch.observe(["host1"])
    assert not watch.verdict("host1", heartbeat_age=600).expired
    write(tmp_path, "host1", 1)  # readable again, same counter: it has been silent all along
    watch.observe(["host1"])
    assert watch.verdict("host1", heartbeat_age=600).expired


def test_a_manager_that_took_over_counts_from_its_own_first_read(tmp_path):
    clock = Clock()
    write(tmp_path, "host1", 7)
    new_leader = LeaseWatch(str(tmp_path), margin_s=2.0, clock=clock)
    new_leader.observe(["host1"])  # the counter may have stopped long ago: it cannot know, so it waits a whole ttl
    clock.now += 9
    new_leader.observe(["host1"])
    assert not new_leader.verdict("host1", heartbeat_age=300).expired
    clock.now += 1
    new_leader.observe(["host1"])
    assert new_leader.verdict("host1", heartbeat_age=300).expired


def test_a_lease_renews_while_its_counter_moved_within_three_renewals_and_says_when_released(tmp_path):
    clock = Clock()
    watch = LeaseWatch(str(tmp_path), margin_s=2.0, clock=clock)

    def renew(counter: int, released: bool = False) -> None:
        (tmp_path / "host1.lease").write_text(json.dumps({"host": "host1", "counter": counter, "ttl_seconds": 8,
                                                          "renew_seconds": 1, "released": released}))
        watch.observe(["host1"])

    renew(1)
    verdict = watch.verdict("host1", heartbeat_age=30)
    assert verdict.renewing and not verdict.released and verdict.counter == 1
    clock.now += 2.9
    watch.observe(["host1"])
    assert watch.verdict("host1", heartbeat_age=30).renewing
    clock.now += 0.1  # three renewal periods without a move: no longer renewing (dead, frozen or cut off)
    watch.observe(["host1"])
    assert not watch.verdict("host1", heartbeat_age=30).renewing
    renew(2, released=True)
    verdict = watch.verdict("host1", heartbeat_age=30)
    assert verdict.renewing and verdict.released
    (tmp_path / "host1.lease").unlink()  # unread in this round: neither renewing nor released
    watch.observe(["host1"])
    verdict = watch.verdict("host1", heartbeat_age=30)
    assert not verdict.renewing and not verdict.released


def test_a_release_request_names_the_counter_read(tmp_path):
    watch = LeaseWatch(str(tmp_path), margin_s=2.0)
    assert watch.request_release("host1", 42)
    assert json.loads((tmp_path / "host1.release").read_text()) == {"host": "host1", "counter": 42}
    assert not LeaseWatch(str(tmp_path / "missing"), margin_s=2.0).request_release("host1", 1)
