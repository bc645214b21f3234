"""Several `vdi serve` processes on one Postgres database, started the way an operator runs an HA installation
(docs/ha.md), for tests/integration/ha and bench/ha_failover.py.

Each manager has its own data directory and port, the installation's shared secrets (VDI_SECRET_KEY, the node key
file) and its own VDI_INSTANCE_ID; the lease timings are short so that a takeover takes seconds. `kill()` is a
SIGKILL of the manager and everything it started; `freeze()`/`thaw()` are SIGSTOP/SIGCONT (a paused process: a long
GC, a VM stopped by its hypervisor). Every process is gone when the group closes.
"""
from __future__ import annotations

import contextlib
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import httpx

from manager.embedded_nodes import free_port, wait_until_answers
from tests.harness.processes import kill_process_tree

REPO = Path(__file__).resolve().parents[2]
API = "/api/v1"
T = TypeVar("T")


@dataclass
class ManagerProcess:
    name: str
    port: int
    process: subprocess.Popen
    log_path: Path
    frozen: bool = False

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def alive(self) -> bool:
        return self.process.poll() is None


@dataclass
class ManagerGroup:
    """`vdi serve` processes sharing `database_url`; `workdir` holds their data directories and logs."""
    database_url: str
    workdir: Path
    ttl_s: float = 3.0
    renew_s: float = 1.0
    quiet_s: float = 0.0
    env: dict[str, str] = field(default_factory=dict)
    managers: dict[str, ManagerProcess] = field(default_factory=dict)
    admin_password: str = field(default_factory=lambda: secrets.token_urlsafe(12))
    _token: str = ""

    def _env(self, name: str, port: int) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("VDI_")}
        data_dir = self.workdir / name
        env.update(VDI_DATA_DIR=str(data_dir), VDI_DATABASE_URL=self.database_url, VDI_HOST="127.0.0.1",
                   VDI_PORT=str(port), VDI_INSTANCE_ID=name, VDI_EMBEDDED_NODES="false",
                   VDI_NODE_KEY_FILE=str(self.workdir / "node-key"), VDI_SECRET_KEY="ha-test-" + "k" * 32,
                   VDI_ADMIN_PASSWORD=self.admin_password, VDI_HA_LEASE_TTL_SECONDS=str(self.ttl_s),
                   VDI_HA_LEASE_RENEW_SECONDS=str(self.renew_s), VDI_HA_TAKEOVER_QUIET_SECONDS=str(self.quiet_s),
                   VDI_LOG_LEVEL="INFO")
        env.update(self.env)
        return env

    def start(self, name: str, port: int | None = None) -> ManagerProcess:
        """Start manager `name` (a new process on its previous port when it ran before) and wait until it serves."""
        previous = self.managers.get(name)
        port = port or (previous.port if previous else free_port())
        log_path = self.workdir / f"{name}.log"
        self.workdir.mkdir(parents=True, exist_ok=True)
        with open(log_path, "ab") as out:
            process = subprocess.Popen([sys.executable, "-m", "manager.cli", "serve", "--no-upgrade"],
                                       env=self._env(name, port), cwd=REPO, stdout=out, stderr=subprocess.STDOUT,
                                       stdin=subprocess.DEVNULL)
        manager = self.managers[name] = ManagerProcess(name, port, process, log_path)
        try:
            wait_until_answers(f"{manager.url}{API}/health", process, f"manager {name}", timeout=90)
        except RuntimeError as exc:
            raise RuntimeError(f"{exc}; {log_path}:\n{self.log_tail(name)}") from None
        return manager

    def log_tail(self, name: str, chars: int = 4000) -> str:
        try:
            return self.managers[name].log_path.read_text(errors="replace")[-chars:]
        except (KeyError, FileNotFoundError):
            return "(no log)"

    @property
    def token(self) -> str:
        """An admin bearer token (admin@local made by `vdi restore-admin`), valid on every manager."""
        if not self._token:
            name, manager = next((n, m) for n, m in self.managers.items() if m.alive and not m.frozen)
            subprocess.run([sys.executable, "-m", "manager.cli", "restore-admin"], env=self._env(name, manager.port),
                           cwd=REPO, check=True, capture_output=True, stdin=subprocess.DEVNULL)
            answer = httpx.post(f"{manager.url}{API}/auth/login", timeout=30,
                                json={"username": "admin@local", "password": self.admin_password})
            answer.raise_for_status()
            self._token = answer.json()["token"]
        return self._token

    def api(self, name: str, method: str, path: str, **kwargs: Any) -> httpx.Response:
        return httpx.request(method, f"{self.managers[name].url}{API}{path}", timeout=kwargs.pop("timeout", 30),
                             headers={"Authorization": f"Bearer {self.token}"}, **kwargs)

    def ha(self, name: str) -> dict[str, Any]:
        """GET /api/v1/ha as manager `name` answers it."""
        answer = self.api(name, "GET", "/ha", timeout=10)
        answer.raise_for_status()
        return answer.json()

    def role(self, name: str) -> str | None:
        """"leader" or "standby" as `name` sees itself; None when it does not answer."""
        try:
            return self.ha(name)["this_instance"]["role"]
        except httpx.HTTPError:
            return None

    def leaders(self) -> list[str]:
        """The running (not frozen) managers that say they lead."""
        return [n for n, m in self.managers.items() if m.alive and not m.frozen and self.role(n) == "leader"]

    def kill(self, name: str) -> None:
        kill_process_tree(self.managers[name].process)

    def freeze(self, name: str) -> None:
        os.kill(self.managers[name].process.pid, signal.SIGSTOP)
        self.managers[name].frozen = True

    def thaw(self, name: str) -> None:
        os.kill(self.managers[name].process.pid, signal.SIGCONT)
        self.managers[name].frozen = False

    def close(self) -> None:
        for manager in self.managers.values():
            if manager.frozen and manager.alive:
                self.thaw(manager.name)
            if manager.alive:
                manager.process.terminate()
        for manager in self.managers.values():
            try:
                manager.process.wait(20)
            except subprocess.TimeoutExpired:
                kill_process_tree(manager.process)


@contextlib.contextmanager
def manager_group(database_url: str, workdir: Path, names: Sequence[str] = ("m1", "m2"),
                  **options: Any) -> Iterator[ManagerGroup]:
    """A ManagerGroup (`options`: its fields) with managers `names` started; every process gone on exit."""
    group = ManagerGroup(database_url, workdir, **options)
    try:
        for name in names:
            group.start(name)
        yield group
    finally:
        group.close()


def wait_for(what: str, probe: Callable[[], T | None], bound_s: float = 60.0, every_s: float = 0.1) -> T:
    """Poll `probe` until it returns something truthy and return it; AssertionError naming `what` after `bound_s`
    (a bound against hanging, not a timing assertion)."""
    deadline = time.monotonic() + bound_s
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {bound_s:g} s (last: {value!r})")
        time.sleep(every_s)
