"""The pure rules of host failover: liveness from heartbeat age and probe, the connectivity guard, and fencing's
insistence on a confirmed power-off (fence agents here are plain objects: the real IPMI path is tested against a
real BMC in tests/integration/ha)."""
from __future__ import annotations

import pytest

from ha_manager import fencing
from ha_manager.liveness import CONNECTING, NON_RESPONSIVE, UP, LivenessTimings, next_liveness

T = LivenessTimings(connecting_after=6, non_responsive_after=12)


@pytest.mark.parametrize("current, age, probe, expected", [
    (UP, 2.0, None, UP),
    (UP, 7.0, False, CONNECTING),  # late: suspected
    (UP, 7.0, True, CONNECTING),
    (CONNECTING, 13.0, False, NON_RESPONSIVE),  # silent past the limit and the probe failed
    (CONNECTING, 13.0, True, CONNECTING),  # the agent answers: alive, only its heartbeats are late
    (UP, 30.0, False, NON_RESPONSIVE),  # the monitor itself was late: still judged by the age
    (CONNECTING, 1.0, None, UP),  # heartbeats back (a restarted agent): not a failure
    (NON_RESPONSIVE, 1.0, None, UP),
    (NON_RESPONSIVE, 8.0, False, NON_RESPONSIVE),  # one stray probe timeout does not half-revive it
    (UP, None, None, UP),  # never sent a heartbeat (being installed): not judged
])
def test_liveness(current, age, probe, expected):
    assert next_liveness(current, age, probe, T) == expected


def test_timings_must_be_ordered():
    with pytest.raises(ValueError):
        LivenessTimings(connecting_after=20, non_responsive_after=10)


@pytest.mark.parametrize("unreachable, total, broken", [
    (1, 2, False),  # one host of two: that host failed (a two-host cluster must be able to fence)
    (1, 1, False),
    (2, 2, True),
    (2, 3, True),
    (2, 4, True),  # half
    (2, 5, False),
    (3, 5, True),
    (0, 3, False),
])
def test_connectivity_guard(unreachable, total, broken):
    assert fencing.connectivity_broken(unreachable, total, 0.5) is broken


class Agent:
    """A fence agent whose BMC turns the power off after `off_after` status reads (never when None)."""

    def __init__(self, name, off_after=1, fail=False):
        self.description, self.off_after, self.fail = name, off_after, fail
        self.reads = self.offs = 0
        self.closed = False

    def power_off(self):
        if self.fail:
            raise fencing.FenceError(f"{self.description}: refused")
        self.offs += 1

    def power_state(self):
        self.reads += 1
        return "off" if self.offs and self.off_after is not None and self.reads > self.off_after else "on"

    def close(self):
        self.closed = True


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now

    def sleep(self, seconds):
        self.now += seconds


def test_only_a_confirmed_power_off_counts():
    clock = Clock()
    stuck = Agent("stuck", off_after=None)
    with pytest.raises(fencing.FenceError, match="still on"):
        fencing.power_off_confirmed(stuck, 5, clock=clock, sleep=clock.sleep)
    assert stuck.offs == 1 and clock.now >= 5
    assert "powered the host off" in fencing.power_off_confirmed(Agent("ok", off_after=3), 5, clock=clock,
                                                                 sleep=clock.sleep)


def test_fence_tries_each_agent_in_order_until_one_confirms():
    agents = {"a": Agent("a", fail=True), "b": Agent("b")}
    configs = [fencing.AgentConfig("ipmi", "a"), fencing.AgentConfig("ipmi", "b")]
    outcome = fencing.fence(configs, 5, make=lambda config, _t: agents[config.address])
    assert outcome.fenced and outcome.agent == "b"
    assert outcome.attempts[0] == "a: refused" and all(a.closed for a in agents.values())
    nothing = fencing.fence([], 5)
    assert not nothing.fenced and "no fence agent" in nothing.detail
    unknown = fencing.fence([fencing.AgentConfig("smoke-signals", "x")], 5)
    assert not unknown.fenced and "smoke-signals" in unknown.detail


def test_agent_config_hides_the_password():
    assert "s3cret" not in repr(fencing.AgentConfig("ipmi", "bmc1", 623, "root", "s3cret"))


class SwitchableAgent(Agent):
    """An agent whose BMC also powers the host on (the policy engine's wake), at once."""

    def __init__(self, name, state="off", fail=False):
        super().__init__(name, fail=fail)
        self.state = state

    def power_on(self):
        if self.fail:
            raise fencing.FenceError(f"{self.description}: refused")
        self.state = "on"

    def power_off(self):
        super().power_off()
        self.state = "off"

    def power_state(self):
        return self.state


def test_switch_power_on_and_off_through_the_first_agent_that_confirms():
    agents = {"a": SwitchableAgent("a", fail=True), "b": SwitchableAgent("b")}
    configs = [fencing.AgentConfig("ipmi", "a"), fencing.AgentConfig("ipmi", "b")]
    make = lambda config, _t: agents[config.address]  # noqa: E731
    assert fencing.switch_power(configs, True, 5, make=make) == "b powered the host on"
    assert agents["b"].state == "on" and all(a.closed for a in agents.values())
    assert fencing.switch_power(configs[1:], True, 5, make=make) == "b reports the host on already"
    assert fencing.switch_power(configs[1:], False, 5, make=make) == "b powered the host off"
    with pytest.raises(fencing.FenceError, match="a: refused"):
        fencing.switch_power(configs[:1], True, 5, make=make)
    with pytest.raises(fencing.FenceError, match="no power"):
        fencing.switch_power([], True, 5)


def test_a_power_on_is_confirmed_only_when_the_bmc_reports_on():
    clock = Clock()
    stuck = SwitchableAgent("stuck")
    stuck.power_on = lambda: None  # the BMC takes the command and the power stays off
    with pytest.raises(fencing.FenceError, match="still off"):
        fencing.switch_confirmed(stuck, "on", 5, clock=clock, sleep=clock.sleep)
    assert clock.now >= 5
