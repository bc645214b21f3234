"""How fast one policy round decides, and how close to the fewest migrations its load balancing gets.

    .venv/bin/python bench/policies.py [--desktops 2000] [--hosts 40] [--seed 19]

A snapshot of --hosts hosts (16 CPUs, 256 GiB each) and --desktops running desktops (1 or 2 vCPUs, 1 to 4 GiB)
with skewed load: desktops land on hosts by a Zipf-like weight, so the first hosts carry several times their share
and run far over the thresholds. The decide function is pure (policy_engine.decide), so the snapshot is built in
memory as the leader's loop would read it from the database. Load balancing runs with the default thresholds
(80 % CPU, 85 % memory, 10 % hysteresis) and no cap on concurrent migrations, so one round reaches balance.
A host's load is the larger of its CPU and memory percentages. `fewest_migrations` is a lower bound (per overloaded
host, the fewest desktops whose removal brings it under its target, ignoring where they go).

The same world is also written to a scratch Postgres database (vdi_bench_policies, dropped afterwards; --no-db to
skip) to time what the leader's round does before deciding: policy_engine.service.snapshot() reading it back
(`snapshot_ms`), and the decisions it then takes are checked to be the in-memory ones. Prints one JSON object.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from policy_engine.config import ClusterPolicies, LoadBalancing  # noqa: E402
from policy_engine.decide import MIGRATE, DesktopSnap, HostSnap, Snapshot, decide, fewest_migrations  # noqa: E402


def world(desktops: int, hosts: int, seed: int) -> Snapshot:
    rng = random.Random(seed)
    host_list = [HostSnap(id=f"h{i:03d}", name=f"host{i:03d}", cluster_id="c", status="up", cpus=16,
                          memory_mib=262144, free_memory_mib=262144, has_power_agent=True) for i in range(hosts)]
    weights = [1.0 / (i + 1) ** 0.8 for i in range(hosts)]
    desktop_list = []
    for n in range(desktops):
        host = rng.choices(host_list, weights)[0]
        cpus = rng.choice((1, 2))
        d = DesktopSnap(id=f"d{n:05d}", name=f"desk{n:05d}", host_id=host.id, pool_id=None, running=True,
                        cpus=cpus, memory_mib=rng.choice((1024, 2048, 4096)),
                        cpu_usage=min(100.0, rng.expovariate(1 / 10)))
        desktop_list.append(d)
        host.free_memory_mib -= d.memory_mib
        host.cpu_usage += d.cpu_usage * d.cpus / host.cpus
    for h in host_list:  # a host cannot use more than all of itself: what a real one reports
        h.cpu_usage = min(h.cpu_usage, 100.0)
        h.free_memory_mib = max(h.free_memory_mib, 0)
    return Snapshot(now=dt.datetime(2026, 1, 5, 12, 0, tzinfo=dt.timezone.utc), hosts=host_list,
                    desktops=desktop_list)


def load_after(snapshot: Snapshot, decisions) -> tuple[float, float]:
    hosts = {h.id: h for h in snapshot.hosts}
    desktops = {d.id: d for d in snapshot.desktops}
    cpu = {h.id: sum(d.cpu_usage * d.cpus / h.cpus for d in snapshot.desktops if d.host_id == h.id)
           for h in snapshot.hosts}
    used = {h.id: h.memory_mib - h.free_memory_mib for h in snapshot.hosts}
    for dec in decisions:
        d = desktops[dec.desktop_id]
        cpu[dec.host_id] -= d.cpu_usage * d.cpus / hosts[dec.host_id].cpus
        cpu[dec.target_host_id] += d.cpu_usage * d.cpus / hosts[dec.target_host_id].cpus
        used[dec.host_id] -= d.memory_mib
        used[dec.target_host_id] += d.memory_mib
    loads = {i: max(cpu[i], 100.0 * used[i] / hosts[i].memory_mib) for i in hosts}
    return max(loads.values()), sum(1 for v in loads.values() if v > 80)


ADMIN_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
DB_NAME = "vdi_bench_policies"


def snapshot_from_database(snapshot: Snapshot, policies: dict) -> tuple[float, int]:
    """Write the world to a scratch database, read it back as the leader's round does; (best snapshot ms, the
    number of migrations decided on what was read)."""
    from sqlalchemy import text

    from core.enums import HostStatus, PowerState
    from manager import db
    from manager.db import make_engine
    from manager.migrate import upgrade
    from manager.models import Cluster, ClusterPolicy, Desktop, Host
    from policy_engine import service

    admin = make_engine(ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{DB_NAME}" WITH (FORCE)'))
        conn.execute(text(f'CREATE DATABASE "{DB_NAME}"'))
    url = ADMIN_URL.rsplit("/", 1)[0] + "/" + DB_NAME
    try:
        upgrade(url)
        engine = make_engine(url)
        db.configure(engine=engine)
        with db.session_scope() as session:
            cluster = Cluster(id="c", name="bench")
            session.add(cluster)
            session.add(ClusterPolicy(cluster_id="c", config=policies["c"].model_dump_json()))
            session.flush()
            session.add_all([Host(id=h.id, name=h.name, cluster_id="c", status=HostStatus.UP, cpus=h.cpus,
                                  memory_mib=h.memory_mib, free_memory_mib=h.free_memory_mib,
                                  cpu_usage=min(100, round(h.cpu_usage)), agent_url="http://bench", libvirt_uri="test:///")
                             for h in snapshot.hosts])
            session.flush()
            session.add_all([Desktop(id=d.id, name=d.name, host_id=d.host_id, power_state=PowerState.UP, cpus=d.cpus,
                                     memory_mib=d.memory_mib, cpu_usage=round(d.cpu_usage))
                             for d in snapshot.desktops])
        timings = []
        for _ in range(5):
            with db.session_scope() as session:
                started = time.perf_counter()
                read = service.snapshot(session, "c", now=snapshot.now)
                timings.append((time.perf_counter() - started) * 1000)
        for h in read.hosts:  # the demand, as in memory (a stored host figure is capped at 100 %)
            h.cpu_usage = next(x.cpu_usage for x in snapshot.hosts if x.id == h.id)
        decided = [d for d in decide(read, policies) if d.action == MIGRATE]
        engine.dispose()
        return min(timings), len(decided)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{DB_NAME}" WITH (FORCE)'))
        admin.dispose()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--desktops", type=int, default=2000)
    parser.add_argument("--hosts", type=int, default=40)
    parser.add_argument("--seed", type=int, default=19)
    parser.add_argument("--no-db", action="store_true", help="skip the snapshot read from Postgres")
    args = parser.parse_args()
    snapshot = world(args.desktops, args.hosts, args.seed)
    # the demand as measured from the desktops (a host's own figure is capped at 100 %)
    cpu_demand = {h.id: sum(d.cpu_usage * d.cpus / h.cpus for d in snapshot.desktops if d.host_id == h.id)
                  for h in snapshot.hosts}
    for h in snapshot.hosts:
        h.cpu_usage = cpu_demand[h.id]
    before = max(h.load() for h in snapshot.hosts)
    policies = {"c": ClusterPolicies(load_balancing=LoadBalancing(enabled=True, max_concurrent_migrations=1000))}
    lower_bound = fewest_migrations(snapshot.hosts, snapshot.desktops, policies["c"])
    timings = []
    for _ in range(5):
        started = time.perf_counter()
        decisions = decide(snapshot, policies)
        timings.append((time.perf_counter() - started) * 1000)
    migrations = [d for d in decisions if d.action == MIGRATE]
    after, over_after = load_after(snapshot, migrations)
    snapshot_ms, db_migrations = (None, None) if args.no_db else snapshot_from_database(snapshot, policies)
    print(json.dumps({
        "desktops": args.desktops, "hosts": args.hosts, "decide_ms": round(min(timings), 1),
        "decide_ms_max": round(max(timings), 1), "migrations": len(migrations),
        "fewest_migrations_lower_bound": lower_bound,
        "max_host_load_before": round(before, 1), "max_host_load_after": round(after, 1),
        "threshold": 80, "target": 70, "hosts_over_after": over_after,
        "snapshot_ms": round(snapshot_ms, 1) if snapshot_ms is not None else None,
        "migrations_from_db_snapshot": db_migrations,
    }))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
