"""The real manager for browser tests and scripts/screenshots.py, started the way a user starts it.

`running_manager(database_url)` makes a private VDI_DATA_DIR, runs `vdi demo --real-guests no` (the demo data:
hosts vs-a and vs-b with real node agents on libvirt test-driver hypervisors, the demo template imported, the
"eng" pool and carol's desktop provisioned, users alice/bob/carol/dave), then `vdi serve` on a free 127.0.0.1
port, and waits for /api/v1/health. Test-driver hosts keep setup to seconds and the two shared cores free:
booting carol's desktop as a real QEMU guest (what `vdi demo` does where libvirtd is usable) costs a CPU for the
whole session and no page needs it yet; `real_guests="auto"` asks for it.

On exit the manager gets SIGTERM (its lifespan stops the node agents it started) and, if it lingers, it and
everything it started are killed; the data directory is removed (kept when VDI_E2E_KEEP=1, for a look at the
logs).
"""
from __future__ import annotations

import contextlib
import functools
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from manager.embedded_nodes import free_port, wait_until_answers
from tests.harness.processes import kill_process_tree

REPO = Path(__file__).resolve().parents[2]
API = "/api/v1"
ROLES = ("SuperUser", "DesktopAdmin", "HelpDesk", "User")
ADMIN_USERNAME = "admin@local"


@dataclass(frozen=True)
class Account:
    """Someone who can log in: `username` as typed in the login form."""
    username: str
    password: str
    role: str
    user_id: str = ""


@dataclass
class RunningManager:
    """A `vdi serve` process with the demo data in `database_url`. `admin_api` is an httpx client for /api/v1 as
    admin@local."""
    base_url: str
    admin: Account
    database_url: str
    data_dir: Path
    process: subprocess.Popen
    _clients: list[httpx.Client] = field(default_factory=list, repr=False)
    _by_role: dict[str, Account] = field(default_factory=dict, repr=False)

    @property
    def log_path(self) -> Path:
        return self.data_dir / "logs" / "manager.log"

    def api(self, account: Account | None = None) -> httpx.Client:
        """An httpx client for `<base>/api/v1` holding a bearer token of `account` (default admin@local);
        closed when the manager stops."""
        account = account or self.admin
        client = httpx.Client(base_url=f"{self.base_url}{API}", timeout=60)
        self._clients.append(client)
        response = client.post("/auth/login", json={"username": account.username, "password": account.password})
        if response.status_code != 200:
            raise RuntimeError(f"log in as {account.username}: {response.status_code} {response.text}")
        client.headers["Authorization"] = f"Bearer {response.json()['token']}"
        return client

    @functools.cached_property
    def admin_api(self) -> httpx.Client:
        return self.api(self.admin)

    def create_user(self, username: str, role: str = "User", password: str | None = None) -> Account:
        """A new local account holding `role` (one of ROLES; every account holds User), made through the API."""
        if role not in ROLES:
            raise ValueError(f"role must be one of {ROLES}, not {role!r}")
        password = password or secrets.token_urlsafe(12)
        made = self.admin_api.post("/users", json={"username": username, "password": password,
                                                   "display_name": f"{username} ({role})"})
        made.raise_for_status()
        user_id = made.json()["id"]
        if role != "User":
            self.admin_api.post("/role-assignments", json={"user_id": user_id, "role": role}).raise_for_status()
        return Account(username, password, role, user_id)

    def account(self, role: str) -> Account:
        """One account per role for the whole run (admin@local for SuperUser), made on first use."""
        if role == "SuperUser":
            return self.admin
        if role not in self._by_role:
            self._by_role[role] = self.create_user(f"e2e-{role.lower()}", role)
        return self._by_role[role]

    def close_clients(self) -> None:
        for client in self._clients:
            client.close()
        self._clients.clear()


def _manager_env(data_dir: Path, database_url: str, port: int, admin_password: str, log_level: str) -> dict[str, str]:
    # Our VDI_* only (the demo image cache may be moved by the caller's VDI_CACHE_DIR).
    env = {k: v for k, v in os.environ.items() if not k.startswith("VDI_") or k == "VDI_CACHE_DIR"}
    env.update(VDI_DATA_DIR=str(data_dir), VDI_DATABASE_URL=database_url, VDI_HOST="127.0.0.1", VDI_PORT=str(port),
               VDI_ADMIN_PASSWORD=admin_password, VDI_LOG_LEVEL=log_level)
    return env


def _vdi(*args: str) -> list[str]:
    return [sys.executable, "-m", "manager.cli", *args]  # the `vdi` command (pyproject's entry point)


def _log_tail(path: Path, chars: int = 3000) -> str:
    try:
        return path.read_text(errors="replace")[-chars:]
    except FileNotFoundError:
        return "(no log)"


def _run_step(argv: list[str], env: dict[str, str], log: Path, what: str, timeout: float) -> None:
    with open(log, "ab") as out:
        proc = subprocess.Popen(argv, env=env, cwd=REPO, stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL)
    try:
        code = proc.wait(timeout)
    except subprocess.TimeoutExpired:
        kill_process_tree(proc)  # with the node agents it started
        raise RuntimeError(f"{what} did not finish within {timeout:.0f} s; {log}:\n{_log_tail(log)}") from None
    if code != 0:
        raise RuntimeError(f"{what} exited with {code}; {log}:\n{_log_tail(log)}")


def stop_manager(proc: subprocess.Popen, timeout: float = 30.0) -> None:
    """SIGTERM: the manager's lifespan stops its node agents before it exits. One that does not exit within
    `timeout` s (a browser still holding an event stream open) is killed with everything it started."""
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        kill_process_tree(proc)


@contextlib.contextmanager
def running_manager(database_url: str, *, admin_password: str | None = None, real_guests: str = "no",
                    log_level: str = "WARNING", startup_timeout: float = 120.0,
                    env: dict[str, str] | None = None, demo_args: tuple[str, ...] = ()) -> Iterator[RunningManager]:
    """The demo seeded into `database_url` and `vdi serve` answering on a free 127.0.0.1 port (see the module).
    `env`: more VDI_* settings for both (e.g. VDI_MANAGER_ID, so that a test can remove its real guests);
    `demo_args`: more `vdi demo` options (e.g. --image-variant planner)."""
    data_dir = Path(tempfile.mkdtemp(prefix="vdi-e2e-"))  # not pytest's tmp dirs: parallel sessions prune those
    logs = data_dir / "logs"
    logs.mkdir()
    port = free_port()
    admin = Account(ADMIN_USERNAME, admin_password or secrets.token_urlsafe(16), "SuperUser")
    env = _manager_env(data_dir, database_url, port, admin.password, log_level) | (env or {})
    proc = None
    try:
        _run_step(_vdi("demo", "--real-guests", real_guests, *demo_args), env, logs / "demo.log", "vdi demo", timeout=600)
        with open(logs / "manager.log", "ab") as out:
            proc = subprocess.Popen(_vdi("serve", "--no-upgrade"), env=env, cwd=REPO, stdout=out,
                                    stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        server = RunningManager(f"http://127.0.0.1:{port}", admin, database_url, data_dir, proc)
        try:
            wait_until_answers(f"{server.base_url}{API}/health", proc, "vdi serve", timeout=startup_timeout)
        except RuntimeError as exc:
            raise RuntimeError(f"{exc}; {server.log_path}:\n{_log_tail(server.log_path)}") from None
        try:
            yield server
        finally:
            server.close_clients()
    finally:
        if proc is not None:
            stop_manager(proc)
        if os.environ.get("VDI_E2E_KEEP") == "1":
            print(f"kept {data_dir}", file=sys.stderr)
        else:
            shutil.rmtree(data_dir, ignore_errors=True)


@contextlib.contextmanager
def manager_with_real_guests(prefix: str, env: dict[str, str] | None = None,
                             demo_args: tuple[str, ...] = ()) -> Iterator[RunningManager]:
    """`running_manager` on a fresh database with real guests (`vdi demo --real-guests yes`: carol-finance boots as a
    real QEMU guest on vs-a). Its node agents run under a manager id of their own, so that every guest they defined
    is removed afterwards, whatever the test did. Raises PostgresUnavailable before yielding."""
    from hypervisor_node.driver import LibvirtDriver
    from tests.harness.guests import remove_owned_domains
    from tests.harness.postgres import fresh_database

    manager_id = f"{prefix}-{secrets.token_hex(4)}"
    try:
        with fresh_database(prefix.replace("-", "_")) as url, \
                running_manager(url, real_guests="yes", env={"VDI_MANAGER_ID": manager_id, **(env or {})},
                                demo_args=demo_args) as server:
            yield server
    finally:
        driver = LibvirtDriver("qemu:///system", manager_id=manager_id)
        try:
            remove_owned_domains(driver)
        finally:
            driver.close()
