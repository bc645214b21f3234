"""A BMC for a harness host: a real IPMI 2.0 (RMCP+) server, pyghmi's `pyghmi.ipmi.bmc.Bmc`, whose chassis power-off
hard-kills that host (and, with --redfish-port, the same power control over Redfish) (its libvirtd, virtlogd, QEMU guests and node agent), so fencing in tests goes through the real
IPMI path the manager uses with hardware BMCs.

It runs as its own process (pyghmi's client and server share module-level session state, so a BMC inside the
manager's process would not be a real peer), out of band like a real BMC: a host whose network is cut keeps its BMC.

    bmc = HarnessBmc(cluster, "host1").start()     # listens on 127.0.0.1:<bmc.port> (UDP), user/password below
    ... the manager fences host1 through ipmi 127.0.0.1:<port> ...
    bmc.power_offs()                                # the power-off commands the BMC carried out (log lines)
    bmc.stop()

Power state: "on" while any process of the host's PID namespace lives, "off" once every one is gone (killed
processes release their file locks as they exit, so "off" means the disks are free). A power-on (the policy
engine's wake from standby) switches the chassis on, as a real BMC does at once, and logs it (`bmc.power_ons()`);
the operating system "boots" when the test then calls HostCluster.start_host, which needs a new BMC for later
power-offs.

Run directly: python -m tests.harness.bmc --port P --user U --password W --init-pid N [--wake-pid M] --log FILE
"""
from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from tests.harness.hosts import REPO_ROOT, HostCluster, _pid_namespace_members

USER = "fence"
PASSWORD = "harness-bmc-password"


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def _sha1_only(serversession) -> None:
    """pyghmi's server speaks cipher suite 3 (HMAC-SHA1) only but accepts a SHA-256 proposal and answers it with
    SHA-1 anyway, which pyghmi's own client cannot parse. Answer such a proposal as a SHA-1-only BMC does, with RMCP+
    status 0x04 (invalid authentication algorithm); clients then propose SHA-1, as pyghmi's and ipmitool's do."""
    original = serversession.ServerSession.create_open_session_response

    def create_open_session_response(self, request):
        if len(request) > 12 and request[12] != 1:  # the authentication algorithm proposed: 1 is RAKP-HMAC-SHA1
            return bytearray([request[0], 0x04, 0, 0]) + bytearray(request[4:8])
        return original(self, request)

    serversession.ServerSession.create_open_session_response = create_open_session_response


def _serve(args: argparse.Namespace) -> int:
    import pyghmi.ipmi.bmc as bmc
    import pyghmi.ipmi.private.serversession as serversession

    _sha1_only(serversession)

    if os.readlink(f"/proc/{args.init_pid}/ns/pid") == os.readlink("/proc/self/ns/pid"):
        raise SystemExit(f"process {args.init_pid} is in this machine's PID namespace, not a harness host's: "
                         "a power-off would kill everything")
    log = open(args.log, "a", buffering=1)
    namespace_members = _pid_namespace_members(args.init_pid)

    class HostBmc(bmc.Bmc):
        victims: list[int] = []
        switched_on = False  # a power-on since the last power-off: the chassis is on, the host boots

        def get_power_state(self):
            if self.switched_on:
                return "on"
            pids = self.victims or [args.init_pid]
            return "on" if any(_alive(pid) for pid in pids) else "off"

        def power_off(self):
            # as HostCluster.kill_host: freeze every process of the host, then SIGKILL each, so none reacts
            self.victims = _pid_namespace_members(args.init_pid) or namespace_members
            for sig in (signal.SIGSTOP, signal.SIGKILL):
                for pid in self.victims:
                    try:
                        os.kill(pid, sig)
                    except ProcessLookupError:
                        pass
            for pid in args.wake_pid:  # nsenter outside the namespace stops with its child: let it reap
                try:
                    os.kill(pid, signal.SIGCONT)
                except ProcessLookupError:
                    pass
            HostBmc.switched_on = False
            log.write(f"{time.time():.3f} power_off {len(self.victims)} processes\n")
            return 0

        def power_on(self):
            HostBmc.switched_on = True
            log.write(f"{time.time():.3f} power_on\n")
            return 0

        def power_shutdown(self):
            return self.power_off()

        def power_reset(self):
            raise NotImplementedError

        def cold_reset(self):
            return 0

    server = HostBmc({args.user: args.password}, port=args.port, address="127.0.0.1")
    if args.redfish_port:
        _serve_redfish(args, server)
    log.write(f"{time.time():.3f} listening\n")
    server.listen()
    return 0


def _serve_redfish(args: argparse.Namespace, host_bmc) -> None:
    """The same BMC's Redfish service over plain HTTP with basic authentication (a thread of this process): one
    system, /redfish/v1/Systems/1, whose PowerState is the host's and whose ComputerSystem.Reset ForceOff is the
    same power-off as IPMI's."""
    import base64
    import http.server
    import json
    import threading

    expected = "Basic " + base64.b64encode(f"{args.user}:{args.password}".encode()).decode()
    system = "/redfish/v1/Systems/1"

    class Handler(http.server.BaseHTTPRequestHandler):
        def _answer(self, status: int, body: dict | None = None) -> None:
            data = json.dumps(body).encode() if body is not None else b""
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _authorised(self) -> bool:
            if self.headers.get("Authorization") != expected:
                self._answer(401, {"error": {"message": "authentication required"}})
                return False
            return True

        def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
            if not self._authorised():
                return
            if self.path == "/redfish/v1/Systems":
                self._answer(200, {"Members": [{"@odata.id": system}], "Members@odata.count": 1})
            elif self.path == system:
                state = "On" if host_bmc.get_power_state() == "on" else "Off"
                self._answer(200, {"@odata.id": system, "Id": "1", "PowerState": state})
            else:
                self._answer(404, {"error": {"message": f"no resource {self.path}"}})

        def do_POST(self) -> None:  # noqa: N802
            if not self._authorised():
                return
            length = int(self.headers.get("Content-Length") or 0)
            body = json.loads(self.rfile.read(length) or b"{}")
            if self.path != f"{system}/Actions/ComputerSystem.Reset":
                self._answer(404, {"error": {"message": f"no action {self.path}"}})
            elif body.get("ResetType") != "ForceOff":
                self._answer(400, {"error": {"message": f"ResetType {body.get('ResetType')!r} is not supported"}})
            else:
                host_bmc.power_off()
                self._answer(204)

        def log_message(self, *_args) -> None:
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", args.redfish_port), Handler)
    threading.Thread(target=httpd.serve_forever, name="redfish", daemon=True).start()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--user", default=USER)
    parser.add_argument("--password", default=PASSWORD)
    parser.add_argument("--init-pid", type=int, required=True, help="PID (root namespace) of the host's init")
    parser.add_argument("--wake-pid", type=int, action="append", default=[],
                        help="a process outside the host to SIGCONT after the kill (the agent's nsenter)")
    parser.add_argument("--log", required=True)
    parser.add_argument("--redfish-port", type=int, default=0, help="also serve Redfish over HTTP on this port")
    return _serve(parser.parse_args(argv))


def _free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class HarnessBmc:
    """The BMC process of one running harness host (see the module docstring)."""

    def __init__(self, cluster: HostCluster, name: str) -> None:
        host = cluster.host(name)
        if not host.running or host.init_pid is None:
            raise RuntimeError(f"host {name} is not running: start it before its BMC")
        self.name = name
        self.address = "127.0.0.1"
        self.port = _free_udp_port()
        self.user, self.password = USER, PASSWORD
        self.log_path = host.base / "bmc.log"
        self._argv = [sys.executable, "-m", "tests.harness.bmc", "--port", str(self.port), "--user", self.user,
                      "--password", self.password, "--init-pid", str(host.init_pid), "--log", str(self.log_path)]
        if host.agent_process is not None:
            self._argv += ["--wake-pid", str(host.agent_process.pid)]
        self.process: subprocess.Popen | None = None

    def start(self) -> "HarnessBmc":
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")])))
        with open(self.log_path, "ab") as out:
            self.process = subprocess.Popen(self._argv, stdout=out, stderr=out, stdin=subprocess.DEVNULL, env=env,
                                            cwd=REPO_ROOT)
        deadline = time.monotonic() + 30
        while "listening" not in self._log():
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the BMC of {self.name} did not start: {self._log()[-2000:]}")
            time.sleep(0.05)
        return self

    def _log(self) -> str:
        try:
            return Path(self.log_path).read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def power_offs(self) -> list[str]:
        return [line for line in self._log().splitlines() if " power_off " in line]

    def power_ons(self) -> list[str]:
        return [line for line in self._log().splitlines() if line.endswith(" power_on")]

    def agent_config(self) -> dict:
        """The fence agent as the manager's API takes it."""
        return {"kind": "ipmi", "address": self.address, "port": self.port, "username": self.user,
                "password": self.password}

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        self.process = None


if __name__ == "__main__":
    raise SystemExit(main())
