"""Login storm: N users connect at once to an N-desktop pool; prints one JSON object.

Real parts: a fresh Postgres database migrated by Alembic, the manager as a uvicorn process, three node agents on
libvirt test-driver hypervisors holding the desktops (overlays written by image_manager, domains defined and
started through NodeClient, so every desktop is running before the storm), API tokens (token lookup is a hash;
password logins are deliberately slow and not what is measured here).

Clients ask for RDP: the libvirt test driver cannot change a running domain's graphics password
(virDomainUpdateDeviceFlags is unsupported), so a SPICE ticket cannot be set on these hosts; the RDP path
does every broker step (entitlement through a group, SKIP LOCKED assignment, session, events) without it.

Two ways to storm:

* closed loop (the default): `--clients` keep-alive connections, each sending its users' connects one after
  another, waiting for each answer. It measures throughput; its latency is only clients / throughput.
* open loop (`--rate R`): connects arrive at R per second whatever the answers do, as users do; each connect goes
  out on an idle connection (a new one is opened when none is idle) and its latency counts from the moment it was
  due, not from when it was sent, so a stalled server cannot hide its queue (no coordinated omission).

    {"mode": "closed" | "open", "offered_per_second" (open), "per_second", "p50_ms", "p95_ms", "p99_ms",
     "double_assignments", "errors", ...}

Usage: python bench/login_storm.py [--users 2000] [--desktops 2000] [--clients 64 | --rate 250] [--workers 2]
                                   [--profile FILE]

--profile FILE samples the manager's processes with py-spy (`pip install py-spy`; not a project dependency) while
the storm runs, only threads holding the GIL (Python CPU, not waiting), as py-spy's raw collapsed stacks. Sampling
slows the manager down: figures of a profiled run are not the benchmark's.
"""
from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from pathlib import Path

from sqlalchemy import func, select, text

from bench.rawhttp import post_json, read_status
from manager.embedded_nodes import (EmbeddedNode, NodeAgentProcess, free_port, libvirt_test_driver_uri, stop_process,
                                    wait_until_answers)

REPO = Path(__file__).resolve().parents[1]
PG_ADMIN_URL = os.environ.get("VDI_BENCH_PG_ADMIN_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")


def process_tree_cpu_seconds(pid: int) -> float:
    """CPU time (user + system) used so far by a process and all its descendants, those that have exited included
    (a Postgres backend that closed its connection counts in the postmaster's cutime/cstime)."""
    total, todo = 0.0, [pid]
    while todo:
        current = todo.pop()
        try:
            fields = Path(f"/proc/{current}/stat").read_text().rsplit(")", 1)[1].split()
            total += sum(int(f) for f in fields[11:15]) / os.sysconf("SC_CLK_TCK")
            for task in Path(f"/proc/{current}/task").iterdir():
                todo += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            continue
    return total


def machine_busy_seconds() -> float:
    """CPU time the whole machine has spent busy (every state but idle and iowait), summed over its cores."""
    fields = [int(f) for f in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return (sum(fields[:8]) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")


def postmaster_pid(engine) -> int | None:
    """The Postgres server's process on this machine (its backends are its children), or None if it is elsewhere."""
    with engine.connect() as conn:
        data_dir = conn.execute(text("SHOW data_directory")).scalar()
    try:
        return int(Path(data_dir, "postmaster.pid").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def wait_until_settled(pid: int, timeout: float = 120) -> None:
    """Wait until the manager's start-up work (each worker's image reconcile pass reads every overlay's header)
    is over: the storm measures connects, not start-up."""
    deadline = time.monotonic() + timeout
    previous = process_tree_cpu_seconds(pid)
    while time.monotonic() < deadline:
        time.sleep(1)
        now = process_tree_cpu_seconds(pid)
        if now - previous < 0.05:
            return
        previous = now


def start_agents(count: int, work: Path, agents: list[NodeAgentProcess]) -> list[tuple[str, str, str]]:
    """`count` node agents on private test-driver hypervisors; appended to `agents` as they start."""
    for i in range(count):
        node_xml = work / f"node{i}.xml"
        node_xml.write_text("<node/>\n")
        # domain_types="": every type the test driver reports (the agent's default)
        node = EmbeddedNode(name=f"node{i}", libvirt_uri=libvirt_test_driver_uri(node_xml), port=free_port(),
                            token=uuid.uuid4().hex, domain_types="")
        agent = NodeAgentProcess(node, manager_url=None, log_path=work / f"node{i}.log")
        agents.append(agent)
        agent.start()
    return [(a.node.name, a.node.url, a.node.token) for a in agents]


def setup_world(agents, template: Path, users: int, desktops: int) -> tuple[str, list[str]]:
    """Hosts, a template, a pool of running desktops, users in an entitled group; returns (pool id, tokens)."""
    from core.enums import HostStatus, OsType, PoolType
    from manager import db
    from manager.auth import issue_token
    from manager.models import (Cluster, Desktop, Entitlement, Group, Host, Pool, Template, TemplateVersion, User,
                                UserGroupMembership, Volume)
    from manager.provisioning.power import PowerAction, run_power_action
    from manager.provisioning.tasks import grow_pool

    with db.session_scope() as s:
        cluster = Cluster(name="bench")
        s.add(cluster)
        s.flush()
        for name, url, token in agents:
            s.add(Host(name=name, cluster_id=cluster.id, agent_url=url, agent_token=token, address="127.0.0.1",
                       status=HostStatus.UP, memory_mib=1 << 20, free_memory_mib=1 << 20))
        tpl = Template(name="bench-win", os_type=OsType.WINDOWS_11, cpus=1, memory_mib=256)
        s.add(tpl)
        s.flush()
        vol = Volume(path=str(template), role="template", virtual_size=64 << 20)
        s.add(vol)
        s.flush()
        version = TemplateVersion(template_id=tpl.id, number=1, volume_id=vol.id)
        s.add(version)
        s.flush()
        tpl.latest_version_id = version.id
        pool = Pool(name="storm", pool_type=PoolType.AUTOMATIC, template_id=tpl.id, size=desktops,
                    name_pattern="storm-#####", prestarted=desktops)
        s.add(pool)
        s.flush()
        pool_id = pool.id
    created = grow_pool(None, pool_id, desktops)
    if created["created"] != desktops:
        raise RuntimeError(f"provisioning failed: {created}")
    with db.session_scope() as s:
        ids = list(s.scalars(select(Desktop.id).where(Desktop.pool_id == pool_id)))
        s.execute(text("UPDATE desktops SET console_protocols='spice,rdp', "
                       "ip='10.' || (abs(hashtext(id)) % 250)::text || '.0.1' WHERE pool_id=:p"), {"p": pool_id})
    with concurrent.futures.ThreadPoolExecutor(8) as ex:  # prestart every desktop through its node
        list(ex.map(lambda d: run_power_action(d, PowerAction.START, actor="bench"), ids))
    tokens = []
    with db.session_scope() as s:
        group = Group(name="storm-users")
        s.add(group)
        s.flush()
        s.add(Entitlement(group_id=group.id, pool_id=pool_id))
        people = [User(username=f"user{i:05d}") for i in range(users)]
        s.add_all(people)
        s.flush()
        s.add_all([UserGroupMembership(user_id=u.id, group_id=group.id) for u in people])
        for u in people:
            tokens.append(issue_token(s, u, name="bench"))
    return pool_id, tokens


def storm(base_url: str, tokens: list[str], clients: int) -> tuple[list[float], list[int], float]:
    """`clients` keep-alive HTTP/1.1 connections, each sending its users' connects one after another, through
    bench.rawhttp's lean client: a real storm comes from thousands of other machines."""
    host, port = base_url.removeprefix("http://").split(":")
    body = json.dumps({"pool": "storm", "client": {"protocols": ["rdp"], "address": "192.0.2.1"}}).encode()
    slices = [tokens[i::clients] for i in range(clients)]
    latencies: list[float] = []
    statuses: list[int] = []

    async def client(mine: list[str], start: asyncio.Event) -> None:
        reader, writer = await asyncio.open_connection(host, int(port))
        prepared = [post_json("/api/v1/broker/connect", f"{host}:{port}", token, body) for token in mine]
        await start.wait()
        for raw in prepared:
            t0 = time.perf_counter()
            writer.write(raw)
            status = await read_status(reader)
            latencies.append(time.perf_counter() - t0)
            statuses.append(status)
        writer.close()

    async def run() -> float:
        start = asyncio.Event()
        tasks = [asyncio.create_task(client(s, start)) for s in slices]
        await asyncio.sleep(0.5)  # every connection open before the start line
        t0 = time.perf_counter()
        start.set()
        await asyncio.gather(*tasks)
        return time.perf_counter() - t0

    wall = asyncio.run(run())
    return latencies, statuses, wall


def open_storm(base_url: str, tokens: list[str], rate: float, connections: int) -> tuple[list[float], list[int], float]:
    """One connect per token, due at `rate` per second from the start, each on an idle keep-alive connection
    (`connections` opened beforehand; more are opened while all are busy). Latency runs from when a connect was
    due to its answer. Returns (latencies, statuses, seconds from the first due time to the last answer)."""
    host, port = base_url.removeprefix("http://").split(":")
    body = json.dumps({"pool": "storm", "client": {"protocols": ["rdp"], "address": "192.0.2.1"}}).encode()
    prepared = [post_json("/api/v1/broker/connect", f"{host}:{port}", token, body) for token in tokens]
    latencies: list[float] = []
    statuses: list[int] = []

    async def one(raw: bytes, due: float, idle: list) -> None:
        conn = idle.pop() if idle else await asyncio.open_connection(host, int(port))
        reader, writer = conn
        writer.write(raw)
        try:
            status = await read_status(reader)
        except (OSError, asyncio.IncompleteReadError):
            status, conn = 0, None  # the connection broke: an error, and it is not reused
            writer.close()
        latencies.append(time.perf_counter() - due)
        statuses.append(status)
        if conn is not None:
            idle.append(conn)

    async def run() -> float:
        idle = [await asyncio.open_connection(host, int(port)) for _ in range(connections)]
        loop = asyncio.get_running_loop()
        tasks = []
        start = time.perf_counter() + 0.2
        for i, raw in enumerate(prepared):
            due = start + i / rate
            delay = due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(loop.create_task(one(raw, due, idle)))
        await asyncio.gather(*tasks)
        wall = time.perf_counter() - start
        for _reader, writer in idle:
            writer.close()
        return wall

    wall = asyncio.run(run())
    return latencies, statuses, wall


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=2000)
    parser.add_argument("--desktops", type=int, default=2000)
    parser.add_argument("--clients", type=int, default=64, help="closed loop: concurrent clients")
    parser.add_argument("--rate", type=float, help="open loop: connects per second offered (instead of --clients)")
    parser.add_argument("--connections", type=int, default=64,
                        help="open loop: keep-alive connections opened beforehand (more open when all are busy)")
    parser.add_argument("--workers", type=int, default=2, help="uvicorn worker processes")
    parser.add_argument("--agents", type=int, default=3)
    parser.add_argument("--profile", type=Path, help="write a py-spy profile of the manager during the storm here")
    args = parser.parse_args(argv)
    py_spy = shutil.which("py-spy", path=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    if args.profile and py_spy is None:
        parser.error("--profile needs py-spy: pip install py-spy")

    from image_manager import qemu_img
    from manager import db
    from manager.db import make_engine
    from manager.migrate import upgrade
    from manager.models import Desktop, DesktopSession

    work = Path(tempfile.mkdtemp(prefix="vdi-bench-"))
    dbname = f"vdi_bench_{os.getpid()}"
    admin = make_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{dbname}"'))
    url = PG_ADMIN_URL.rsplit("/", 1)[0] + "/" + dbname
    agents: list[NodeAgentProcess] = []
    server: subprocess.Popen | None = None
    try:
        upgrade(url)
        db.configure(url)
        template = work / "storage" / "templates" / "bench" / "1.qcow2"
        template.parent.mkdir(parents=True)
        qemu_img.create(template, size=64 << 20)
        hosts = start_agents(args.agents, work, agents)
        t0 = time.perf_counter()
        pool_id, tokens = setup_world(hosts, template, args.users, args.desktops)
        setup_seconds = time.perf_counter() - t0

        port = free_port()
        # The test-driver agents send no heartbeats (a beat would store their free memory of 0 MiB).
        env = dict(os.environ, VDI_DATABASE_URL=url, VDI_DATA_DIR=str(work / "data"), VDI_LOG_LEVEL="WARNING",
                   VDI_HOST_DEAD_AFTER_SECONDS="86400")
        env.pop("VDI_REDIS_URL", None)
        server = subprocess.Popen([sys.executable, "-m", "uvicorn", "manager.app:create_app", "--factory",
                                   "--host", "127.0.0.1", "--port", str(port), "--workers", str(args.workers),
                                   "--log-level", "warning", "--no-access-log"], cwd=REPO, env=env,
                                  stdout=open(work / "uvicorn.log", "wb"), stderr=subprocess.STDOUT)
        base = f"http://127.0.0.1:{port}"
        wait_until_answers(f"{base}/api/v1/health", server, "uvicorn")
        wait_until_settled(server.pid)
        postgres = postmaster_pid(admin)
        cpu_before = process_tree_cpu_seconds(server.pid)
        postgres_before = process_tree_cpu_seconds(postgres) if postgres else 0.0
        own_before = time.process_time()
        load_before = os.getloadavg()[0]
        machine_before = machine_busy_seconds()

        profiler = None
        if args.profile:
            profiler = subprocess.Popen([py_spy, "record", "--pid", str(server.pid), "--subprocesses", "--gil",
                                         "--nonblocking", "--rate", "200", "--format", "raw", "-o", str(args.profile)],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            time.sleep(2)  # py-spy attaches to every worker
        if args.rate:
            latencies, statuses, wall = open_storm(base, tokens, args.rate, args.connections)
        else:
            latencies, statuses, wall = storm(base, tokens, args.clients)
        if profiler is not None:
            profiler.send_signal(signal.SIGINT)  # py-spy writes its file when interrupted
            profiler.wait()
        per_request = 1000 / max(1, len(statuses))
        server_cpu_ms = (process_tree_cpu_seconds(server.pid) - cpu_before) * per_request
        loadgen_cpu_ms = (time.process_time() - own_before) * per_request
        postgres_cpu_ms = (process_tree_cpu_seconds(postgres) - postgres_before) * per_request if postgres else None
        machine_cores = (machine_busy_seconds() - machine_before) / wall
        ours_cores = (server_cpu_ms + loadgen_cpu_ms + (postgres_cpu_ms or 0)) * len(statuses) / 1000 / wall
        ok = sum(1 for s in statuses if s == 200)
        full = sum(1 for s in statuses if s == 409)
        with db.session_scope() as s:
            per_user = s.execute(select(Desktop.assigned_user_id).where(Desktop.pool_id == pool_id,
                                                                        Desktop.assigned_user_id.is_not(None))
                                 .group_by(Desktop.assigned_user_id).having(func.count() > 1)).all()
            per_desktop = s.execute(select(DesktopSession.desktop_id).group_by(DesktopSession.desktop_id)
                                    .having(func.count(func.distinct(DesktopSession.user_id)) > 1)).all()
            assigned = s.scalar(select(func.count()).select_from(Desktop).where(Desktop.pool_id == pool_id,
                                                                                  Desktop.assigned_user_id.is_not(None)))
        expected_full = max(0, args.users - args.desktops)
        mode = {"mode": "open", "offered_per_second": args.rate} if args.rate else {"mode": "closed"}
        print(json.dumps({
            **mode,
            "assignments": ok,
            "per_second": round(ok / wall, 1) if wall else None,
            "p50_ms": round(statistics.median(latencies) * 1000, 1),
            "p95_ms": round(percentile(latencies, 95) * 1000, 1),
            "p99_ms": round(percentile(latencies, 99) * 1000, 1),
            "double_assignments": len(per_user) + len(per_desktop),
            "errors": len(statuses) - ok - min(full, expected_full),
            "pool_full": full,
            "error_statuses": dict(sorted(Counter(s for s in statuses if s not in (200, 409)).items())),
            "assigned_in_db": assigned,
            "requests": len(statuses),
            "wall_seconds": round(wall, 2), "manager_cpu_ms_per_connect": round(server_cpu_ms, 2),
            "postgres_cpu_ms_per_connect": round(postgres_cpu_ms, 2) if postgres_cpu_ms is not None else None,
            "loadgen_cpu_ms_per_connect": round(loadgen_cpu_ms, 2),
            # how much of the machine the storm had: cores busy during it, the storm's share (manager, Postgres,
            # load generator), and the 1-minute load average as it began
            "cores": os.cpu_count(), "machine_busy_cores": round(machine_cores, 2),
            "storm_cores": round(ours_cores, 2), "load_average_before": round(load_before, 2),
            "users": args.users, "desktops": args.desktops, "workers": args.workers,
            **({"clients": args.clients} if not args.rate else {"connections": args.connections}),
            "node_agents": args.agents, "hosts": "libvirt test driver (desktops running before the storm)",
            "protocol": "rdp", "setup_seconds": round(setup_seconds, 1),
        }))
        return 0
    finally:
        if server is not None:
            stop_process(server)
        for agent in reversed(agents):
            agent.stop()
        db.get_engine().dispose()
        with admin.connect() as conn:
            if not os.environ.get("VDI_BENCH_KEEP"):
                conn.execute(text(f'DROP DATABASE IF EXISTS "{dbname}" WITH (FORCE)'))
        admin.dispose()
        if not os.environ.get("VDI_BENCH_KEEP"):
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
