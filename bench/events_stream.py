"""Benchmark the event stream (issue 17 item 4): many SSE clients while other clients use the API; prints one JSON
object:

    {"clients", "events_per_second", "delivery_p95_ms", "api_p95_ms_with_streams", "api_p95_ms_without", ...}

A real `vdi serve` (one uvicorn process) on a fresh Postgres database. This process writes events through
event_manager at `--rate` per second the whole time (committed one transaction each, as the manager's own work
does) and runs `--api-clients` closed-loop API clients (GET /events?limit=20, GET /health, GET /me/desktops) for
`--seconds`, first with no stream open, then with `--clients` streams open and reading. delivery_ms is the time
from an event's emit (its `time`) to its arrival at a stream client; every client must receive every event
written while it was open (`missed` counts the ones that did not arrive). Goal: delivery p95 < 1 s, the API's
p95 at most 20 % worse with the streams.

Usage: python bench/events_stream.py [--clients 50] [--rate 20] [--api-clients 4] [--seconds 15]
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import httpx
from sqlalchemy import text

from manager.embedded_nodes import free_port, stop_process, wait_until_answers

PG_ADMIN_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
API = "/api/v1"
REPO = Path(__file__).resolve().parents[1]


def p95(values: list[float]) -> float:
    return round(statistics.quantiles(values, n=20)[18], 1) if len(values) >= 20 else round(max(values or [0]), 1)


class Writer(threading.Thread):
    """Events at `rate` per second, each in its own transaction; `written` holds their messages."""

    def __init__(self, rate: float) -> None:
        super().__init__(daemon=True)
        self.rate, self.stopping, self.count = rate, threading.Event(), 0

    def run(self) -> None:
        from event_manager.service import emit
        from manager import db

        period, due = 1.0 / self.rate, time.monotonic()
        while not self.stopping.is_set():
            with db.session_scope() as session:
                emit(session, "directory.synced", f"bench event {self.count}", actor="bench")
            self.count += 1
            due += period
            self.stopping.wait(max(0.0, due - time.monotonic()))


async def api_load(url: str, token: str, clients: int, seconds: float) -> list[float]:
    paths = ["/events?limit=20", "/health", "/me/desktops"]
    latencies: list[float] = []
    end = time.monotonic() + seconds

    async def client(i: int) -> None:
        async with httpx.AsyncClient(base_url=url + API, headers={"Authorization": f"Bearer {token}"},
                                     timeout=60) as http:
            n = i
            while time.monotonic() < end:
                t0 = time.perf_counter()
                answer = await http.get(paths[n % len(paths)])
                latencies.append((time.perf_counter() - t0) * 1000)
                answer.raise_for_status()
                n += 1

    await asyncio.gather(*(client(i) for i in range(clients)))
    return latencies


async def stream_client(url: str, token: str, received: list[tuple[int, float]], opened: asyncio.Event,
                        stop: asyncio.Event) -> None:
    async with httpx.AsyncClient(timeout=httpx.Timeout(60, read=None)) as http:
        async with http.stream("GET", f"{url}{API}/events/stream",
                               headers={"Authorization": f"Bearer {token}"}) as answer:
            answer.raise_for_status()
            lines = answer.aiter_lines()
            async for line in lines:
                if line.startswith(": stream open"):
                    opened.set()
                    break
            reading = asyncio.ensure_future(_read(lines, received))
            await stop.wait()
            reading.cancel()


async def _read(lines, received: list[tuple[int, float]]) -> None:
    import datetime as dt

    async for line in lines:
        if line.startswith("data: "):
            item = json.loads(line[6:])
            sent = dt.datetime.fromisoformat(item["time"].replace("Z", "+00:00")).timestamp()
            received.append((item["id"], (time.time() - sent) * 1000))


def stream_process(url: str, token: str, clients: int, conn) -> None:
    """The stream clients, in a process of their own (their parsing must not slow the API clients' event loop).
    Sends "open" once every stream is reading; on "mark" notes where each client is; on "stop" sends back the
    deliveries after the mark: a list per client of (event id, delivery ms)."""
    async def run() -> None:
        stop = asyncio.Event()
        per_client: list[list[tuple[int, float]]] = [[] for _ in range(clients)]
        opened = [asyncio.Event() for _ in range(clients)]
        tasks = [asyncio.ensure_future(stream_client(url, token, per_client[i], opened[i], stop))
                 for i in range(clients)]
        await asyncio.wait_for(asyncio.gather(*(o.wait() for o in opened)), 120)
        loop = asyncio.get_running_loop()
        conn.send("open")
        assert await loop.run_in_executor(None, conn.recv) == "mark"
        marks = [len(r) for r in per_client]
        assert await loop.run_in_executor(None, conn.recv) == "stop"
        stop.set()
        await asyncio.gather(*tasks, return_exceptions=True)
        conn.send([r[m:] for r, m in zip(per_client, marks)])

    asyncio.run(run())


def measure(url: str, token: str, args) -> dict:
    import multiprocessing

    without = asyncio.run(api_load(url, token, args.api_clients, args.seconds))
    ctx = multiprocessing.get_context("spawn")
    ours, theirs = ctx.Pipe()
    streams = ctx.Process(target=stream_process, args=(url, token, args.clients, theirs), daemon=True)
    streams.start()
    try:
        if not ours.poll(180) or ours.recv() != "open":
            raise RuntimeError("the stream clients did not open")
        time.sleep(2.0)  # every stream past its start
        ours.send("mark")
        with_streams = asyncio.run(api_load(url, token, args.api_clients, args.seconds))
        time.sleep(2.0)  # the last events reach the streams
        ours.send("stop")
        per_client = ours.recv()
    finally:
        streams.join(30)
        if streams.is_alive():
            streams.kill()
    delivery = [ms for received in per_client for _, ms in received]
    ids = [{i for i, _ in received} for received in per_client]
    expected = set().union(*ids)
    missed = sum(len(expected - got) for got in ids)
    return {"without": without, "with": with_streams, "delivery": delivery, "missed": missed,
            "distinct_events": len(expected)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--rate", type=float, default=20.0, help="events written per second")
    parser.add_argument("--api-clients", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=15.0, help="length of each API phase")
    args = parser.parse_args(argv)

    from manager import db
    from manager.auth import issue_token
    from manager.bootstrap import ensure_admin
    from manager.db import make_engine
    from manager.migrate import upgrade

    work = Path(tempfile.mkdtemp(prefix="vdi-bench-events-"))
    dbname = f"vdi_bench_events_{uuid.uuid4().hex[:8]}"
    admin = make_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{dbname}"'))
    url = PG_ADMIN_URL.rsplit("/", 1)[0] + "/" + dbname
    server = None
    writer = Writer(args.rate)
    try:
        upgrade(url)
        db.configure(url)
        with db.session_scope() as session:
            user, _ = ensure_admin(session, password="bench-password-123")
            token = issue_token(session, user, name="bench")
        port = free_port()
        env = dict(os.environ, VDI_DATABASE_URL=url, VDI_DATA_DIR=str(work / "data"), VDI_LOG_LEVEL="WARNING",
                   VDI_EMBEDDED_NODES="false", VDI_HOST="127.0.0.1", VDI_PORT=str(port))
        env.pop("VDI_REDIS_URL", None)
        with open(work / "serve.log", "wb") as log:
            server = subprocess.Popen([sys.executable, "-m", "manager.cli", "serve", "--no-upgrade"], cwd=REPO,
                                      env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        base = f"http://127.0.0.1:{port}"
        wait_until_answers(f"{base}{API}/health", server, "vdi serve", timeout=90)
        writer.start()
        t0, c0 = time.monotonic(), writer.count
        result = measure(base, token, args)
        rate = (writer.count - c0) / (time.monotonic() - t0)
        print(json.dumps({
            "clients": args.clients,
            "events_per_second": round(rate, 1),
            "delivery_p95_ms": p95(result["delivery"]),
            "api_p95_ms_with_streams": p95(result["with"]),
            "api_p95_ms_without": p95(result["without"]),
            "delivery_p50_ms": round(statistics.median(result["delivery"]), 1) if result["delivery"] else None,
            "deliveries": len(result["delivery"]),
            "missed": result["missed"],
            "api_requests_with_streams": len(result["with"]),
            "api_requests_without": len(result["without"]),
        }))
        return 0
    finally:
        writer.stopping.set()
        if server is not None:
            stop_process(server)
        db.get_engine().dispose()
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{dbname}" WITH (FORCE)'))
        admin.dispose()


if __name__ == "__main__":
    sys.exit(main())
