"""The embedded default, as `make run` starts it: SQLite, in-process jobs, the demo data, `vdi serve`."""
from __future__ import annotations

import json
import os
import shutil
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def embedded_env(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("VDI_")}
    env.update(VDI_DATA_DIR=str(tmp_path / "data"), VDI_ADMIN_PASSWORD="smoke-admin-pw", VDI_PORT=str(free_port()))
    return env


def run_vdi(env, *args, timeout=300):
    return subprocess.run([sys.executable, "-m", "manager.cli", *args], env=env, capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL)


def assert_secrets_private(data_dir):
    """Every file holding secrets is 0600 and the data directory 0711: others may traverse it to the storage
    directory (QEMU runs as libvirt-qemu) but neither list it nor read the database or the node tokens."""
    assert stat.S_IMODE(data_dir.stat().st_mode) == 0o711
    secret_files = [p for p in data_dir.iterdir()
                    if p.name.startswith("vdi.db") or p.name in ("embedded-nodes.json", "admin-password", "node-key")]
    assert {p.name for p in secret_files} >= {"vdi.db", "embedded-nodes.json", "node-key"}
    for path in secret_files:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, f"{path.name} is {oct(path.stat().st_mode)}"
    assert stat.S_IMODE((data_dir / "storage").stat().st_mode) & 0o005 == 0o005  # guests still reach their disks


def test_make_run_path_serves_health_and_demo_desktops(embedded_env):
    first = run_vdi(embedded_env, "demo", "--real-guests", "no")
    assert first.returncode == 0, first.stderr
    data_dir = Path(embedded_env["VDI_DATA_DIR"])
    assert_secrets_private(data_dir)
    database = b"".join(p.read_bytes() for p in data_dir.iterdir() if p.name.startswith("vdi.db"))
    tokens = [node["token"] for node in json.loads((data_dir / "embedded-nodes.json").read_text())]
    assert tokens and not any(t.encode() in database for t in tokens)  # the database yields no node token
    assert "admin@local" in first.stdout
    second = run_vdi(embedded_env, "demo", "--real-guests", "no")
    assert second.returncode == 0, second.stderr  # a second run reuses the data

    port = embedded_env["VDI_PORT"]
    server = subprocess.Popen([sys.executable, "-m", "manager.cli", "serve"], env=embedded_env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    base = f"http://127.0.0.1:{port}/api/v1"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                health = httpx.get(f"{base}/health", timeout=2)
                break
            except httpx.TransportError:
                if time.monotonic() > deadline or server.poll() is not None:
                    pytest.fail("vdi serve did not come up")
                time.sleep(0.2)
        assert health.status_code == 200
        assert health.json()["db"] == {"status": "ok", "backend": "sqlite"}
        token = httpx.post(f"{base}/auth/login", json={"username": "admin", "password": "smoke-admin-pw"}).json()["token"]
        desktops = httpx.get(f"{base}/desktops", headers={"Authorization": f"Bearer {token}"}).json()
        names = sorted(d["name"] for d in desktops["items"])
        assert names == ["carol-finance", "eng-001", "eng-002", "eng-003"]
        assert httpx.get(f"{base}/desktops").status_code == 401
        assert {"vdi.db-wal", "vdi.db-shm"} <= {p.name for p in data_dir.iterdir()}
        assert_secrets_private(data_dir)
    finally:
        server.terminate()
        server.wait(timeout=20)


@pytest.mark.libvirt
@pytest.mark.slow
def test_a_second_demo_starts_what_it_says_it_starts(embedded_env):
    """Issue 21 item 6: carol's desktop stopped while no manager ran (the machine or libvirtd restarted), the
    database still said up, and a second `vdi demo` printed "carol-finance is booting" without starting it. The
    demo now asks the hypervisor instead of trusting the last heartbeat's word."""
    import sqlite3
    import uuid as uuid_mod

    from hypervisor_node.driver import LibvirtDriver
    from tests.harness.guests import remove_owned_domains
    from tests.integration.node.conftest import SHARED_ROOT, SYSTEM_URI, ensure_system_libvirtd

    ensure_system_libvirtd()
    embedded_env["VDI_MANAGER_ID"] = manager_id = f"demo-smoke-{uuid_mod.uuid4().hex[:8]}"
    # QEMU (running as libvirt-qemu) must reach the storage: pytest's tmp dirs are private to their user
    SHARED_ROOT.mkdir(parents=True, exist_ok=True)
    os.chmod(SHARED_ROOT, 0o755)
    shared = SHARED_ROOT / manager_id
    shared.mkdir(mode=0o755)
    embedded_env["VDI_DATA_DIR"] = str(shared / "data")
    driver = LibvirtDriver(SYSTEM_URI, manager_id=manager_id)
    database = Path(embedded_env["VDI_DATA_DIR"]) / "vdi.db"

    def carol() -> tuple[str, str]:
        """(what libvirt says, what the database says) of carol-finance's power state."""
        domain = next(d for d in driver.list_domains() if d.name == "carol-finance")
        with sqlite3.connect(database) as conn:
            (stored,) = conn.execute("SELECT power_state FROM desktops WHERE name = 'carol-finance'").fetchone()
        return driver.state(domain.uuid).value, stored

    try:
        first = run_vdi(embedded_env, "demo", "--real-guests", "yes", timeout=900)
        assert first.returncode == 0, first.stderr
        assert "carol-finance is booting" in first.stdout
        assert carol() == ("up", "up")
        # behind the manager's back, as a restart of the machine would: the database still says up
        driver.poweroff(next(d.uuid for d in driver.list_domains() if d.name == "carol-finance"))
        assert carol() == ("down", "up")

        second = run_vdi(embedded_env, "demo", "--real-guests", "yes", timeout=900)
        assert second.returncode == 0, second.stderr
        assert "carol-finance is booting" in second.stdout
        assert carol() == ("up", "up")
    finally:
        try:
            remove_owned_domains(driver)
        finally:
            driver.close()
            shutil.rmtree(shared, ignore_errors=True)
