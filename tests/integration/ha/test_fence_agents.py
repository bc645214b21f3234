"""The IPMI and Redfish fence agents against the harness's BMC: a real IPMI 2.0 BMC (tests/harness/bmc.py, pyghmi's BMC server in its own process)
whose power-off kills a PID namespace standing for a host: the power-off is confirmed only once every process of it
is gone, and a wrong password is a clean failure."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time

import pytest

from ha_manager import fencing
from tests.harness import bmc as harness_bmc
from manager.embedded_nodes import free_port
from tests.harness.hosts import REPO_ROOT, _only_child


@pytest.fixture
def fake_host(tmp_path):
    """A 'host': a PID namespace whose init is a sleep, and a BMC process that can power it off."""
    if os.geteuid() != 0 or not shutil.which("unshare"):
        pytest.skip("needs root and unshare: the BMC powers off a PID namespace")
    host = subprocess.Popen(["unshare", "--pid", "--fork", "--mount-proc", "sleep", "600"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    init = _only_child(host.pid)
    port = harness_bmc._free_udp_port()
    redfish_port = free_port()
    log = tmp_path / "bmc.log"
    server = subprocess.Popen([sys.executable, "-m", "tests.harness.bmc", "--port", str(port), "--init-pid", str(init),
                               "--log", str(log), "--redfish-port", str(redfish_port)], cwd=REPO_ROOT,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while not (log.exists() and "listening" in log.read_text()):
        assert server.poll() is None and time.monotonic() < deadline, "the BMC did not start"
        time.sleep(0.05)
    yield host, port, log, redfish_port
    server.kill()
    server.wait(timeout=10)
    if host.poll() is None:
        host.kill()
    host.wait(timeout=10)


def test_ipmi_power_off_is_confirmed_by_the_bmc(fake_host):
    host, port, log, _redfish = fake_host
    config = fencing.AgentConfig("ipmi", "127.0.0.1", port, harness_bmc.USER, harness_bmc.PASSWORD)
    agent = fencing.make_agent(config, 10)
    assert agent.power_state() == "on"
    outcome = fencing.fence([config], 10)
    assert outcome.fenced and outcome.agent == f"ipmi 127.0.0.1:{port}", outcome
    assert host.wait(timeout=10) is not None  # the namespace's init died with the power-off
    assert len([line for line in log.read_text().splitlines() if " power_off " in line]) == 1
    again = fencing.fence([config], 10)  # an already-off host: confirmed without another power-off
    assert again.fenced and "off already" in again.detail


def test_a_wrong_password_fences_nothing(fake_host):
    host, port, log, _redfish = fake_host
    outcome = fencing.fence([fencing.AgentConfig("ipmi", "127.0.0.1", port, harness_bmc.USER, "wrong")], 5)
    assert not outcome.fenced and "password" in outcome.detail.lower()
    assert host.poll() is None and " power_off " not in log.read_text()


def test_redfish_force_off_is_confirmed_by_the_bmc(fake_host):
    host, _port, log, redfish_port = fake_host
    config = fencing.AgentConfig("redfish", "127.0.0.1", redfish_port, harness_bmc.USER, harness_bmc.PASSWORD,
                                 {"scheme": "http"})
    assert fencing.make_agent(config, 10).power_state() == "on"
    outcome = fencing.fence([config], 10)
    assert outcome.fenced and outcome.agent == f"redfish http://127.0.0.1:{redfish_port}", outcome
    assert host.wait(timeout=10) is not None
    assert len([line for line in log.read_text().splitlines() if " power_off " in line]) == 1
    refused = fencing.fence([fencing.AgentConfig("redfish", "127.0.0.1", redfish_port, harness_bmc.USER, "wrong",
                                                 {"scheme": "http"})], 5)
    assert not refused.fenced and "401" in refused.detail
