"""The embedded default, as `make run` starts it: SQLite, in-process jobs, the demo data, `vdi serve`."""
from __future__ import annotations

import json
import os
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
