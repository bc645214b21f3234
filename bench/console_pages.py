"""Benchmark the admin console's pages on Postgres: server time to render them; prints one JSON object.

Uses bench/search.py's inventory (100,000 desktops, 2,000 hosts, 20,000 users, 500 pools, 200,000 events) in a
database of its own, logs in as the bootstrap admin through the login form, and times, in the manager's own
process (the ASGI app driven in-process, so the figure is the server's work and not a network's):

- the search results page for `Vms: status = up` (the first page of about 60,000 matches, with its total),
- a desktop's page (one on a host and in a pool, with its events),
- the dashboard.

    {"search_page_p95_ms", "desktop_page_p95_ms", "dashboard_p95_ms", "pages": {<path>: {"p50_ms", "p95_ms",
     "bytes"}}, "dataset": {...}}

Goal (issue 23): each p95 under 150 ms. Usage: python bench/console_pages.py [--runs 50] [--keep]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from urllib.parse import quote

from sqlalchemy import select

from bench.search import drop_inventory, prepared_inventory

DB_NAME = "vdi_bench_console"
PASSWORD = "bench-admin-password"


def _ms(seconds: float) -> float:
    return round(seconds * 1000, 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--keep", action="store_true", help="keep the database for reruns")
    args = parser.parse_args()

    engine, dataset = prepared_inventory(DB_NAME)
    try:
        report = run(engine, args.runs)
        report["dataset"] = dataset
    finally:
        engine.dispose()
        if not args.keep:
            drop_inventory(DB_NAME)
    print(json.dumps(report, indent=1))


def run(engine, runs: int) -> dict:
    from fastapi.testclient import TestClient

    from manager import db
    from manager.app import create_app
    from manager.bootstrap import ensure_admin
    from manager.config import get_settings
    from manager.models import Desktop

    os.environ.update(VDI_DATABASE_URL=engine.url.render_as_string(hide_password=False),
                      VDI_DATA_DIR=tempfile.mkdtemp(prefix="vdi-bench-console-"), VDI_LOG_LEVEL="WARNING")
    os.environ.pop("VDI_REDIS_URL", None)
    get_settings.cache_clear()
    db.configure(engine=engine)
    with db.session_scope() as session:
        ensure_admin(session, password=PASSWORD)
        desktop_id = session.scalar(select(Desktop.id).where(Desktop.host_id.is_not(None), Desktop.pool_id.is_not(None))
                                    .order_by(Desktop.name).limit(1))
    # No `with`: the app's lifespan (monitors, node agents, reconcile) is not part of rendering a page.
    client = TestClient(create_app(get_settings(), configure_db=False))
    login = client.post("/admin/login", data={"username": "admin@local", "password": PASSWORD, "next": "/admin"},
                        follow_redirects=False)
    if login.status_code != 303:
        raise SystemExit(f"login failed: {login.status_code} {login.text[:300]}")

    pages = {"search_page": "/admin?q=" + quote("Vms: status = up"),
             "desktop_page": f"/admin/desktops/{desktop_id}",
             "dashboard": "/admin/dashboard"}
    report: dict = {"pages": {}}
    for key, path in pages.items():
        for _ in range(3):  # warm caches and the database's buffers
            client.get(path)
        timings = []
        size = 0
        for _ in range(runs):
            start = time.perf_counter()
            response = client.get(path)
            timings.append(time.perf_counter() - start)
            if response.status_code != 200:
                raise SystemExit(f"{path} answered {response.status_code}: {response.text[:300]}")
            size = len(response.content)
        p95 = statistics.quantiles(timings, n=20)[18] if len(timings) >= 2 else timings[0]
        report[f"{key}_p95_ms"] = _ms(p95)
        report["pages"][path] = {"p50_ms": _ms(statistics.median(timings)), "p95_ms": _ms(p95), "bytes": size}
    return report


if __name__ == "__main__":
    main()
