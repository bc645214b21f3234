"""Benchmark the administrator search on Postgres; prints one JSON object.

Builds an inventory in a dedicated database (migrated by Alembic, so it has the search indexes): 100,000
desktops, 2,000 hosts, 20,000 users, 500 pools, 200,000 events, plus clusters, templates, holdings (assignments,
entitlements) and tags. Then runs representative queries through manager.api.search.run_search (compile, count,
one page) `--runs` times each, and the same searches with index and bitmap scans disabled (the naive sequential
ILIKE plan) `--seq-runs` times for comparison; and the search bar's value suggestions (the completion of a
half-typed query plus its database lookup, manager.search_values) `--runs` times each:

    {"queries": {"<query>": {"p50_ms", "p95_ms", "rows", "seqscan_p50_ms"}},
     "completions": {"<typed text>": {"p50_ms", "p95_ms", "suggestions"}}, "dataset": {...}}

Usage: python bench/search.py [--runs 50] [--seq-runs 5] [--keep] [--explain]
  --keep leaves the database (vdi_bench_search) for reruns, which then skip the data generation.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import random
import statistics
import sys
import time
import uuid
from typing import Any

from sqlalchemy import text
from sqlalchemy.orm import Session

from manager.api.search import SEARCH_SETTINGS, few_matches_statement, many_matches_statement, run_search
from manager.db import make_engine
from manager.migrate import upgrade
from manager.models import Base
from manager.search_fields import REGISTRY
from manager.search_values import suggest_values
from search_dsl import compile_query, complete

ADMIN_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
DB_NAME = "vdi_bench_search"
SIZES = {"desktops": 100_000, "hosts": 2_000, "users": 20_000, "pools": 500, "events": 200_000, "clusters": 20,
         "templates": 50, "tags": 40}

QUERIES = [
    "Vms: name = desk-0421*",                                                     # prefix wildcard
    "Vms: name = *4217*",                                                         # infix wildcard
    "Vms: Users.usrname = *john* and Templates.name = *xp* and apps = *office*",  # the white paper's
    "Vms: cpu_usage > 90 and Hosts.name = vs-a*",                                 # the white paper's
    "Hosts: Vms.status = paused and cpu_usage > 80",                              # reverse cross-reference
    "Users: Vms.name = desk-00042*",                                              # users holding desktops
    "Vms: status = up and cluster = cluster-07 sortby cpu_usage desc",            # sort
    "Vms: status = up page 50",                                                   # deep page, default order
    "Vms: status = up sortby name asc page 50",                                   # oVirt's ASC NULLS FIRST
    "Events: severity >= error and event_host = host-0002*",                      # events by severity
    "Events: severity = alert sortby time desc",
    "Vms: tag = region-eu",                                                       # tag with descendants
    "Vms: mary",                                                                  # free text
]

# Half-typed queries whose value the search bar completes from the database (at most 20 names each).
COMPLETIONS = ["Vms: name = d", "Vms: name = DESK-04", "Vms: name = zz", "Vms: Hosts.name = vs", "Vms: pool = pool-4",
               "Vms: tag = reg", "Users: usrname = name3", "Events: event_vm = desk-09"]

FIRST = ["john", "mary", "ahmed", "li", "olga", "pierre", "sven", "ana", "kofi", "yuki"] + \
        [f"name{i}" for i in range(40)]
LAST = ["smith", "jones", "garcia", "muller", "rossi", "dubois", "tanaka", "novak"] + [f"family{i}" for i in range(92)]
APPS = ["firefox", "Microsoft Office 2019,firefox", "libreoffice,thunderbird", "chrome", "office365,teams",
        "gimp,inkscape", ""]
STATES = ["up"] * 60 + ["down"] * 30 + ["paused"] * 5 + ["suspended"] * 3 + ["migrating", "not_responding"]
SEVERITIES = ["normal"] * 80 + ["warning"] * 12 + ["error"] * 7 + ["alert"]


def _defaults(table) -> dict:
    """Column defaults for COPY (which bypasses SQLAlchemy's Python-side defaults)."""
    out = {}
    for column in table.columns:
        default = column.default
        if default is None:
            out[column.name] = None
        elif default.is_callable:
            out[column.name] = default.arg(None)
        elif default.is_scalar:
            value = default.arg
            out[column.name] = getattr(value, "value", value)
    return out


def _copy(conn, table_name: str, rows) -> int:
    """COPY dict rows into a table, filling the columns a row leaves out with their defaults."""
    table = Base.metadata.tables[table_name]
    defaults = _defaults(table)
    names = [c.name for c in table.columns]
    count = 0
    raw = conn.connection.driver_connection
    with raw.cursor() as cur, cur.copy(f'COPY "{table_name}" ({", ".join(names)}) FROM STDIN') as copy:
        for row in rows:
            copy.write_row([row.get(n, defaults[n]) if n in row else _fresh(defaults, n) for n in names])
            count += 1
    return count


def _fresh(defaults: dict, name: str):
    if name == "id":
        return str(uuid.uuid4())
    value = defaults[name]
    return value() if callable(value) else value


def generate(engine, seed: int = 7) -> dict:
    rnd = random.Random(seed)
    now = dt.datetime.now(dt.timezone.utc)
    ids = lambda n: [str(uuid.UUID(int=rnd.getrandbits(128), version=4)) for _ in range(n)]  # noqa: E731
    counts = {}
    with engine.begin() as conn:
        clusters = ids(SIZES["clusters"])
        counts["clusters"] = _copy(conn, "clusters", ({"id": c, "name": f"cluster-{i:02d}", "created_at": now}
                                                      for i, c in enumerate(clusters)))
        hosts = ids(SIZES["hosts"])
        counts["hosts"] = _copy(conn, "hosts", ({
            "id": h, "name": f"vs-a-{i:03d}" if i < 20 else f"host-{i:05d}", "cluster_id": rnd.choice(clusters),
            "address": f"10.{i // 250}.{i % 250}.1", "status": rnd.choice(["up"] * 9 + ["maintenance", "down"]),
            "cpus": rnd.choice([16, 32, 64]), "memory_mib": 262144, "cpu_usage": rnd.randint(0, 100),
            "mem_usage": rnd.randint(0, 100), "cpu_model": rnd.choice(["Intel Xeon Gold", "AMD EPYC 7302"]),
            "libvirt_version": "9.0.0", "created_at": now} for i, h in enumerate(hosts)))
        counts["storage_domains"] = _copy(conn, "storage_domains", ({
            "id": str(uuid.uuid4()), "name": f"sd-{i}", "path": f"/srv/sd-{i}", "created_at": now}
            for i in range(5)))
        templates = ids(SIZES["templates"])
        kinds = ["win-xp", "win10", "rhel9", "ubuntu", "debian"]
        counts["templates"] = _copy(conn, "templates", ({
            "id": t, "name": f"{kinds[i % 5]}-{i:02d}", "os_type": "other_linux", "created_at": now}
            for i, t in enumerate(templates)))
        versions = []
        version_rows = []
        for t in templates:
            for number in (1, 2):
                versions.append(str(uuid.uuid4()))
                version_rows.append({"id": versions[-1], "template_id": t, "number": number,
                                     "name": "base version" if number == 1 else f"v{number}", "created_at": now})
        counts["template_versions"] = _copy(conn, "template_versions", version_rows)
        pools = ids(SIZES["pools"])
        counts["pools"] = _copy(conn, "pools", ({
            "id": p, "name": f"pool-{i:03d}", "cluster_id": rnd.choice(clusters), "template_id": rnd.choice(templates),
            "pool_type": rnd.choice(["automatic", "manual"]), "created_at": now} for i, p in enumerate(pools)))
        users = ids(SIZES["users"])
        counts["users"] = _copy(conn, "users", ({
            "id": u, "username": f"{rnd.choice(FIRST)}.{rnd.choice(LAST)}{i}", "domain": "corp",
            "first_name": rnd.choice(FIRST).title(), "last_name": rnd.choice(LAST).title(),
            "department": rnd.choice(["eng", "finance", "sales", "support"]), "created_at": now}
            for i, u in enumerate(users)))
        desktops = ids(SIZES["desktops"])
        desktop_rows = []
        for i, d in enumerate(desktops):
            state = rnd.choice(STATES)
            desktop_rows.append({
                "id": d, "name": f"desk-{i:06d}", "template_version_id": rnd.choice(versions),
                "host_id": rnd.choice(hosts) if state != "down" or rnd.random() < 0.2 else None,
                "pool_id": rnd.choice(pools) if rnd.random() < 0.5 else None, "power_state": state,
                "cpu_usage": rnd.randint(0, 100), "mem_usage": rnd.randint(0, 100),
                "ip": f"10.{100 + i // 65536}.{i // 256 % 256}.{i % 256}", "guest_hostname": f"desk-{i:06d}.corp",
                "installed_apps": rnd.choice(APPS), "description": rnd.choice(["", "", "frontend", "build box"]),
                "assigned_user_id": rnd.choice(users) if rnd.random() < 0.3 else None,
                "started_at": now - dt.timedelta(minutes=rnd.randint(1, 100_000)), "created_at": now,
                "updated_at": now})
        counts["desktops"] = _copy(conn, "desktops", desktop_rows)
        pairs = {(rnd.choice(desktops), rnd.choice(users)) for _ in range(20_000)}
        counts["assignments"] = _copy(conn, "assignments", ({
            "desktop_id": d, "user_id": u, "created_at": now} for d, u in pairs))
        ent = {(rnd.choice(desktops), rnd.choice(users)) for _ in range(10_000)} - pairs
        counts["entitlements"] = _copy(conn, "entitlements", [
            {"desktop_id": d, "user_id": u, "created_at": now} for d, u in ent] + [
            {"pool_id": p, "user_id": u, "created_at": now}
            for p, u in {(rnd.choice(pools), rnd.choice(users)) for _ in range(5_000)}])
        tags, tag_rows = [], []
        for i in range(SIZES["tags"]):
            parent = rnd.choice(tags) if tags and i % 4 else None
            tags.append(str(uuid.uuid4()))
            tag_rows.append({"id": tags[-1], "name": "region-eu" if i == 0 else f"tag-{i:02d}",
                             "parent_id": parent if i else None, "created_at": now})
        counts["tags"] = _copy(conn, "tags", tag_rows)
        tagged = {(rnd.choice(tags), d) for d in rnd.sample(desktops, 30_000)}
        counts["tag_assignments"] = _copy(conn, "tag_assignments", ({
            "tag_id": t, "object_kind": "desktop", "object_id": d} for t, d in tagged))
        event_rows = []
        for i in range(SIZES["events"]):
            desktop = rnd.randrange(len(desktops))
            event_rows.append({
                "id": i + 1, "time": now - dt.timedelta(seconds=rnd.randint(0, 90 * 86400)),
                "severity": rnd.choice(SEVERITIES), "code": rnd.choice(["desktop.started", "desktop.stopped",
                                                                         "host.up", "disk.error"]),
                "message": f"desktop desk-{desktop:06d} changed state", "actor": "system",
                "desktop_id": desktops[desktop], "host_id": rnd.choice(hosts),
                "user_id": rnd.choice(users) if rnd.random() < 0.3 else None, "deleted": False})
        counts["events"] = _copy(conn, "events", event_rows)
        conn.execute(text("SELECT setval(pg_get_serial_sequence('events', 'id'), :n)"), {"n": len(event_rows)})
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(text("VACUUM ANALYZE"))
    return counts


def _ms(seconds: float) -> float:
    return round(seconds * 1000, 2)


def _p95(timings: list[float]) -> float:
    return statistics.quantiles(timings, n=20)[18] if len(timings) >= 2 else timings[0]


def time_query(engine, query: str, runs: int) -> tuple[list[float], int]:
    timings, rows = [], 0
    with Session(engine) as session:
        for _ in range(runs):
            start = time.perf_counter()
            result = run_search(session, query)
            timings.append(time.perf_counter() - start)
            rows = result["total"]
            session.rollback()
    return timings, rows


def time_completion(engine, typed: str, runs: int) -> tuple[list[float], int]:
    timings, count = [], 0
    with Session(engine) as session:
        for _ in range(runs):
            start = time.perf_counter()
            count = len(suggest_values(session, complete(typed, REGISTRY)))
            timings.append(time.perf_counter() - start)
        session.rollback()
    return timings, count


def time_sequential(engine, query: str, runs: int) -> list[float]:
    """The same search with index, index-only and bitmap scans off: every ILIKE reads the whole table."""
    timings = []
    with Session(engine) as session:
        for _ in range(runs):
            for setting in ("enable_indexscan", "enable_bitmapscan", "enable_indexonlyscan"):
                session.execute(text(f"SET LOCAL {setting} = off"))
            start = time.perf_counter()
            run_search(session, query)
            timings.append(time.perf_counter() - start)
            session.rollback()
    return timings


def explain(engine, query: str) -> str:
    """EXPLAIN (ANALYZE, BUFFERS) of the statements a search may run (the few-matches page with its total, and
    for more matches the index-walking page with its count), under the search's settings and parameters."""
    compiled = compile_query(query, REGISTRY)
    entity = REGISTRY.get(compiled.query.object).entity
    few, _ = few_matches_statement(compiled, entity)
    out = []
    with engine.connect() as conn:
        conn.execute(SEARCH_SETTINGS)
        for label, statement in (("few matches", few), ("many matches", many_matches_statement(compiled, entity))):
            sql = statement.compile(engine)
            plan = conn.exec_driver_sql(f"EXPLAIN (ANALYZE, BUFFERS) {sql}", sql.params).scalars().all()
            out.append(f"[{label}]\n" + "\n".join(plan))
        conn.rollback()
    return "\n".join(out)


def prepared_inventory(db_name: str) -> tuple[Any, dict]:
    """An engine on database `db_name`, migrated and holding the inventory of SIZES (generated once; a database
    kept from an earlier run is reused), and what was done: {"reused"} or generate()'s counts, with "seconds"."""
    admin = make_engine(ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        if not conn.scalar(text("SELECT 1 FROM pg_database WHERE datname = :n"), {"n": db_name}):
            conn.execute(text(f'CREATE DATABASE "{db_name}"'))
    admin.dispose()
    url = ADMIN_URL.rsplit("/", 1)[0] + "/" + db_name
    upgrade(url)
    engine = make_engine(url)
    with engine.connect() as conn:
        populated = conn.scalar(text("SELECT count(*) FROM desktops")) >= SIZES["desktops"]
    start = time.perf_counter()
    dataset = {"reused": populated} if populated else generate(engine)
    dataset["seconds"] = round(time.perf_counter() - start, 1)
    return engine, dataset


def drop_inventory(db_name: str) -> None:
    admin = make_engine(ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{db_name}" WITH (FORCE)'))
    admin.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--seq-runs", type=int, default=5, help="runs of the sequential-scan comparison")
    parser.add_argument("--keep", action="store_true", help="keep the database for reruns")
    parser.add_argument("--explain", action="store_true", help="print EXPLAIN ANALYZE of each search to stderr")
    args = parser.parse_args()

    report: dict = {"queries": {}}
    engine, report["dataset"] = prepared_inventory(DB_NAME)
    try:
        for query in QUERIES:
            time_query(engine, query, 2)  # warm the cache
            timings, rows = time_query(engine, query, args.runs)
            sequential = time_sequential(engine, query, args.seq_runs)
            report["queries"][query] = {
                "p50_ms": _ms(statistics.median(timings)),
                "p95_ms": _ms(_p95(timings)),
                "rows": rows, "seqscan_p50_ms": _ms(statistics.median(sequential)),
            }
            if args.explain:
                print(f"---- {query}\n{explain(engine, query)}\n", file=sys.stderr)
        report["completions"] = {}
        for typed in COMPLETIONS:
            time_completion(engine, typed, 10)  # warm the cache and the prepared statements
            timings, count = time_completion(engine, typed, args.runs)
            report["completions"][typed] = {"p50_ms": _ms(statistics.median(timings)),
                                            "p95_ms": _ms(_p95(timings)), "suggestions": count}
    finally:
        engine.dispose()
        if not args.keep:
            drop_inventory(DB_NAME)
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
