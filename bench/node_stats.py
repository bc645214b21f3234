"""Heartbeat ingest at scale: 5,000 desktops on 50 libvirt test-driver hosts reporting to a real manager.

Each host is a LibvirtDriver on its own `test:///` hypervisor with 100 running domains; every cycle each host
builds its real heartbeat (one bulk getAllDomainStats call) and POSTs it to `vdi serve` (uvicorn + Postgres),
which writes every desktop's figures in batch. A cycle is all 50 heartbeats arriving (sent 8 at a time) and
being stored; building the payloads (the bulk stats call and the JSON encoding) is timed apart, since on real
hosts each host builds its own on its own CPU.

    .venv/bin/python bench/node_stats.py [--hosts 50] [--per-host 100] [--cycles 20] [--concurrency 8] [--workers 2]

Prints one JSON object: {"desktops", "hosts", "ms_per_cycle_p50", "ms_per_cycle_p95", ...}.
"""
from __future__ import annotations

import argparse
import asyncio
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

from sqlalchemy import insert, text

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.rawhttp import post_json, read_status  # noqa: E402
from core.specs import DesktopSpec  # noqa: E402
from hypervisor_node.agent import Heartbeat  # noqa: E402
from hypervisor_node.driver import LibvirtDriver  # noqa: E402
from manager.db import make_engine  # noqa: E402
from manager.embedded_nodes import wait_until_answers  # noqa: E402
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
        wait_until_answers(f"{manager_url}/api/v1/health", server, "vdi serve")

        def build(beat: Heartbeat) -> tuple[bytes, float]:
            # The host's own work, on its own CPU: the bulk stats call and encoding the report.
            t0 = time.perf_counter()
            body = json.dumps(beat.build_payload()).encode()
            request = post_json(beat.url.removeprefix(manager_url), f"127.0.0.1:{port}", beat._token, body)
            return request, time.perf_counter() - t0

        async def run_cycles() -> tuple[list[float], list[float], list[float]]:
            # `concurrency` keep-alive connections take the cycle's reports in turn (bench.rawhttp: a lean sender;
            # on real hosts each sends its own, here they share the cores with the server).
            connections = [await asyncio.open_connection("127.0.0.1", port) for _ in range(args.concurrency)]
            cycles, build_ms, post_ms = [], [], []
            for cycle in range(args.cycles + 1):
                built = [build(beat) for beat in beats]
                todo = iter(request for request, _ in built)
                posted: list[float] = []

                async def sender(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
                    for request in todo:
                        t_post = time.perf_counter()
                        writer.write(request)
                        status = await read_status(reader)
                        if status != 200:
                            raise SystemExit(f"heartbeat answered {status}")
                        posted.append(time.perf_counter() - t_post)

                t0 = time.perf_counter()
                await asyncio.gather(*(sender(r, w) for r, w in connections))
                elapsed = (time.perf_counter() - t0) * 1000
                if cycle == 0:
                    continue  # the first cycle records every state transition; steady state is what repeats
                cycles.append(elapsed)
                build_ms += [b * 1000 for _, b in built]
                post_ms += [p * 1000 for p in posted]
            for _, writer in connections:
                writer.close()
            return cycles, build_ms, post_ms

        cycles, build_ms, post_ms = asyncio.run(run_cycles())
        print(json.dumps({
            "desktops": len(desktops), "hosts": len(hosts), "cycles": len(cycles),
            "ms_per_cycle_p50": round(statistics.median(cycles), 1),
            "ms_per_cycle_p95": round(percentile(cycles, 0.95), 1),
            "ms_per_heartbeat_post_p95": round(percentile(post_ms, 0.95), 1),
            "ms_per_payload_build_p95": round(percentile(build_ms, 0.95), 1),
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
