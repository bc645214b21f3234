"""Heartbeat ingest at scale: 5,000 desktops on 50 libvirt test-driver hosts reporting to a real manager.

Each host is a LibvirtDriver on its own `test:///` hypervisor with 100 running domains; every cycle each host
builds its real heartbeat (one bulk getAllDomainStats call) and POSTs it to `vdi serve` (uvicorn + Postgres),
which writes every desktop's figures in batch. A cycle is all 50 heartbeats arriving (sent 8 at a time) and
being stored; building the payloads is timed apart, since on real hosts each host builds its own on its own CPU.

    .venv/bin/python bench/node_stats.py [--hosts 50] [--per-host 100] [--cycles 20] [--concurrency 8] [--workers 2]

Prints one JSON object: {"desktops", "hosts", "ms_per_cycle_p50", "ms_per_cycle_p95", ...}.
"""
from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import secrets
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import httpx
from sqlalchemy import insert, text

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from core.specs import DesktopSpec  # noqa: E402
from hypervisor_node.agent import Heartbeat  # noqa: E402
from hypervisor_node.driver import LibvirtDriver  # noqa: E402
from manager.db import make_engine  # noqa: E402
from manager.migrate import upgrade  # noqa: E402
from manager.models import Cluster, Desktop, Host  # noqa: E402

PG_ADMIN = os.environ.get("VDI_BENCH_PG_ADMIN_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
EMPTY_NODE_XML = """<node><cpu><nodes>1</nodes><sockets>1</sockets><cores>32</cores><threads>1</threads>
<mhz>2400</mhz><model>bench</model></cpu><memory>268435456</memory></node>"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hosts", type=int, default=50)
    parser.add_argument("--per-host", type=int, default=100)
    parser.add_argument("--cycles", type=int, default=20)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--workers", type=int, default=2, help="uvicorn worker processes of the manager")
    args = parser.parse_args()

    dbname = f"vdi_bench_nodes_{os.getpid()}"
    admin = make_engine(PG_ADMIN, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{dbname}"'))
    url = PG_ADMIN.rsplit("/", 1)[0] + "/" + dbname
    server = None
    drivers: list[LibvirtDriver] = []
    try:
        upgrade(url)
        engine = make_engine(url)
        hosts = []
        with engine.begin() as conn:
            cluster_id = str(uuid.uuid4())
            conn.execute(insert(Cluster), [{"id": cluster_id, "name": "bench"}])
            for h in range(args.hosts):
                hosts.append({"id": str(uuid.uuid4()), "name": f"bench-h{h:03d}", "cluster_id": cluster_id,
                              "agent_token": secrets.token_urlsafe(24)})
            conn.execute(insert(Host), hosts)
            desktops = [{"id": str(uuid.uuid4()), "name": f"bench-d{h:03d}-{i:03d}", "host_id": hosts[h]["id"]}
                        for h in range(args.hosts) for i in range(args.per_host)]
            conn.execute(insert(Desktop), desktops)
        engine.dispose()

        tmp = Path(tempfile.mkdtemp(prefix="vdi-bench-nodes-"))
        beats: list[Heartbeat] = []
        port = free_port()
        manager_url = f"http://127.0.0.1:{port}"
        for h, host in enumerate(hosts):
            node_xml = tmp / f"{host['name']}.xml"
            node_xml.write_text(EMPTY_NODE_XML)
            driver = LibvirtDriver(f"test://{node_xml}")
            drivers.append(driver)
            for d in desktops[h * args.per_host:(h + 1) * args.per_host]:
                driver.define(DesktopSpec(uuid=d["id"], name=d["name"], vcpus=1, memory_mib=256,
                                          disk_path=f"/nonexistent/{d['id']}.qcow2"))
                driver.start(d["id"])
            beats.append(Heartbeat(driver, host["name"], manager_url, host["agent_token"], interval=5))

        env = {**os.environ, "VDI_DATABASE_URL": url, "VDI_PORT": str(port), "VDI_LOG_LEVEL": "WARNING",
               "VDI_DATA_DIR": str(tmp / "data")}
        env.pop("VDI_REDIS_URL", None)
        server = subprocess.Popen([sys.executable, "-m", "manager.cli", "serve", "--no-upgrade",
                                   "--workers", str(args.workers)], env=env,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        with httpx.Client(timeout=30) as client:
            deadline = time.monotonic() + 60
            while True:
                try:
                    if client.get(f"{manager_url}/api/v1/health").status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                if time.monotonic() > deadline:
                    raise SystemExit("vdi serve did not come up")
                time.sleep(0.2)

            def build(beat: Heartbeat) -> tuple[Heartbeat, dict, float]:
                t0 = time.perf_counter()
                payload = beat.build_payload()
                return beat, payload, time.perf_counter() - t0

            def send(item: tuple[Heartbeat, dict, float]) -> float:
                beat, payload, _ = item
                t0 = time.perf_counter()
                response = client.post(beat.url, json=payload, headers={"Authorization": f"Bearer {beat._token}"})
                response.raise_for_status()
                return time.perf_counter() - t0

            cycles, build_ms, post_ms = [], [], []
            with concurrent.futures.ThreadPoolExecutor(args.concurrency) as pool:
                for cycle in range(args.cycles + 1):
                    built = [build(beat) for beat in beats]
                    t0 = time.perf_counter()
                    posted = list(pool.map(send, built))
                    elapsed = (time.perf_counter() - t0) * 1000
                    if cycle == 0:
                        continue  # the first cycle records every state transition; steady state is what repeats
                    cycles.append(elapsed)
                    build_ms += [b * 1000 for _, _, b in built]
                    post_ms += [p * 1000 for p in posted]
        print(json.dumps({
            "desktops": len(desktops), "hosts": len(hosts), "cycles": len(cycles),
            "ms_per_cycle_p50": round(statistics.median(cycles), 1),
            "ms_per_cycle_p95": round(percentile(cycles, 0.95), 1),
            "ms_per_heartbeat_post_p95": round(percentile(post_ms, 0.95), 1),
            "ms_per_bulk_stats_p95": round(percentile(build_ms, 0.95), 1),
            "concurrency": args.concurrency, "workers": args.workers,
        }))
        return 0
    finally:
        if server is not None:
            server.terminate()
            server.wait(timeout=20)
        for driver in drivers:
            driver.close()
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{dbname}" WITH (FORCE)'))
        admin.dispose()


if __name__ == "__main__":
    sys.exit(main())
