"""Guest facts on the node: the agent's replies as facts, what the heartbeat carries, and silent guests."""
from __future__ import annotations

import time

from hypervisor_node.guest_facts import GuestFacts, parse_facts

REPLIES = {"ip": "10.0.2.15,fec0::1", "hostname": "desk-01", "user": "user,alice",
           "apps": "LibreOffice 7.4,Office Viewer 1.2"}


def test_replies_become_facts_and_unknown_commands_none():
    assert parse_facts(REPLIES) == {"ips": ["10.0.2.15", "fec0::1"], "hostname": "desk-01",
                                    "users": ["user", "alice"], "apps": ["LibreOffice 7.4", "Office Viewer 1.2"]}
    # an older agent answers ERR to commands it does not know: no address, nobody logged in
    old = parse_facts({**REPLIES, "ip": "ERR unknown command 'ip': send help for the list", "user": ""})
    assert (old["ips"], old["users"], old["hostname"]) == ([], [], "desk-01")


def test_only_changed_facts_are_unsent_until_delivered(driver, make_spec):
    facts = GuestFacts(driver, period=60)
    spec = make_spec()
    facts.set_running({spec.uuid})
    facts._latest[spec.uuid] = parse_facts(REPLIES)  # as if the guest had answered
    first = facts.unsent()
    assert first == {spec.uuid: parse_facts(REPLIES)}
    facts.delivered(first)
    assert facts.unsent() == {}
    facts._latest[spec.uuid] = parse_facts({**REPLIES, "user": ""})  # alice and user logged off
    assert facts.unsent()[spec.uuid]["users"] == []
    facts.set_running(set())  # it stopped: forgotten, nothing more to send
    assert facts.unsent() == {}


def test_a_guest_that_does_not_answer_is_asked_again_later_and_later(driver, make_spec):
    spec = make_spec()
    driver.define(spec)
    driver.start(spec.uuid)  # the test driver's domains have no guest agent channel: every call fails
    facts = GuestFacts(driver, period=10)
    facts.set_running({spec.uuid})
    assert facts.poll_due() == 0
    assert 5 < facts._due[spec.uuid] - time.monotonic() <= 10  # asked again after one period
    assert facts.poll_due() == 0  # not its turn: not asked
    facts._due[spec.uuid] = 0  # its turn again
    assert facts.poll_due() == 0
    assert 15 < facts._due[spec.uuid] - time.monotonic() <= 20  # the pause doubled
    assert facts.unsent() == {}
