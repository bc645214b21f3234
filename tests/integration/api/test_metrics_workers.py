"""`vdi serve --workers 2` with PROMETHEUS_MULTIPROC_DIR: whichever worker answers a scrape, the request counter is
the sum over both workers (and VDI_METRICS_TOKEN lets a scraper in without an account)."""
from __future__ import annotations

import subprocess
import sys

import httpx
from prometheus_client.parser import text_string_to_metric_families

from manager.embedded_nodes import wait_until_answers
from tests.integration.test_embedded_smoke import embedded_env, free_port, run_vdi  # noqa: F401 (fixture)

TOKEN = "scrape-token-0123456789abcdef"


def _health_count(base: str) -> float:
    text = httpx.get(f"{base}/metrics", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=10).text
    return sum(s.value for family in text_string_to_metric_families(text) for s in family.samples
               if s.name == "vdi_http_requests_total" and s.labels["route"] == "/api/v1/health")


def test_two_workers_count_together(embedded_env, tmp_path):  # noqa: F811
    stale = tmp_path / "metrics"
    stale.mkdir()
    (stale / "counter_999.db").write_bytes(b"left by an earlier run")  # emptied by vdi serve as it starts
    env = {**embedded_env, "VDI_PORT": str(free_port()), "VDI_EMBEDDED_NODES": "false", "VDI_METRICS_TOKEN": TOKEN,
           "PROMETHEUS_MULTIPROC_DIR": str(stale)}
    assert run_vdi(env, "db", "upgrade").returncode == 0
    server = subprocess.Popen([sys.executable, "-m", "manager.cli", "serve", "--no-upgrade", "--workers", "2"],
                              env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{env['VDI_PORT']}"
    try:
        wait_until_answers(f"{base}/api/v1/health", server, "vdi serve --workers 2", timeout=90)
        assert not (stale / "counter_999.db").exists()
        before, made = _health_count(base), 0
        # a new connection each, until both workers have answered some (each then has its counter file)
        while made < 20 or len(list(stale.glob("counter_*.db"))) < 2:
            assert made < 500, "one worker answered every request"
            assert httpx.get(f"{base}/api/v1/health", timeout=10).status_code == 200
            made += 1
        counts = {_health_count(base) - before for _ in range(6)}  # each scrape may be answered by either worker
    finally:
        server.terminate()
        server.wait(timeout=30)
    assert counts == {float(made)}
