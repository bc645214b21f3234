"""Browser consoles through the manager's WebSocket proxy (manager.console_proxy) to real guests; prints one JSON
object:

    {"connections", "setup_p50_ms", "setup_p95_ms", "throughput_mib_s", "ticket_p50_ms", "ticket_p95_ms", "guests",
     "errors", "seconds"}

Real parts: a fresh Postgres database, `vdi demo --real-guests yes` and `vdi serve` (tests.e2e.server), real QEMU
guests on this machine's libvirtd (carol-finance and, with --guests > 1, the demo pool's desktops started through
the API), and N WebSocket clients speaking RFB as noVNC does (tests.harness.console_viewer), all at once, spread
over the guests (VNC shares a display between viewers).

- setup: the ticket (POST /desktops/{id}/browser-console), the WebSocket's opening and the RFB handshake up to the
  guest's ServerInit, per connection, all N started together;
- throughput: framebuffer-update bytes all clients received per second while each asks for full (non-incremental)
  raw updates in a loop for --seconds.

Usage: python bench/console_proxy.py [--connections 20] [--guests 3] [--seconds 10] [--settle 30]
The guests are removed afterwards. Run it alone on the machine (flock /tmp/vdi-heavy.lock ...).
"""
from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.e2e.server import manager_with_real_guests  # noqa: E402
from tests.harness.console_viewer import Viewer, console_url, open_viewer  # noqa: E402


STALL_S = 60.0  # a connection that receives nothing this long is an error, not a hang


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(fraction * (len(ordered) - 1))))]


async def one_console(api: httpx.AsyncClient, base_url: str, desktop_id: str) -> tuple[float, float, Viewer, object]:
    """(setup ms, of which the ticket's ms, the viewer, its ServerInit)."""
    started = time.perf_counter()
    answer = await api.post(f"/desktops/{desktop_id}/browser-console")
    answer.raise_for_status()
    got = answer.json()
    ticketed = time.perf_counter()
    viewer = await open_viewer(console_url(base_url, got["ws_path"], got["ticket"]))
    _, init = await asyncio.wait_for(viewer.handshake(), STALL_S)
    done = time.perf_counter()
    return (done - started) * 1000, (ticketed - started) * 1000, viewer, init


async def stream(viewer: Viewer, init, until: float) -> None:
    await viewer.set_raw_encoding()
    viewer.received = 0
    while time.perf_counter() < until:
        await viewer.request_update(init.width, init.height, incremental=False)
        await asyncio.wait_for(viewer.drain_messages(), STALL_S)


async def run(base_url: str, token: str, desktop_ids: list[str], connections: int, seconds: float) -> dict:
    async with httpx.AsyncClient(base_url=f"{base_url}/api/v1", timeout=120,
                                 headers={"Authorization": f"Bearer {token}"},
                                 limits=httpx.Limits(max_connections=connections)) as api:
        results = await asyncio.gather(*(one_console(api, base_url, desktop_ids[i % len(desktop_ids)])
                                         for i in range(connections)), return_exceptions=True)
    opened = [r for r in results if not isinstance(r, BaseException)]
    errors = [repr(r)[:200] for r in results if isinstance(r, BaseException)]
    setups = [r[0] for r in opened]
    tickets = [r[1] for r in opened]
    start = time.perf_counter()
    until = start + seconds
    streamed = await asyncio.gather(*(stream(viewer, init, until) for _, _, viewer, init in opened),
                                    return_exceptions=True)
    elapsed = time.perf_counter() - start
    errors += [repr(r)[:200] for r in streamed if isinstance(r, BaseException)]
    received = sum(viewer.received for _, _, viewer, _ in opened)
    for _, _, viewer, _ in opened:
        await viewer.ws.close()
    return {
        "connections": len(opened),
        "setup_p50_ms": round(statistics.median(setups), 1) if setups else None,
        "setup_p95_ms": round(percentile(setups, 0.95), 1) if setups else None,
        "throughput_mib_s": round(received / elapsed / (1 << 20), 2),
        "ticket_p50_ms": round(statistics.median(tickets), 1) if tickets else None,
        "ticket_p95_ms": round(percentile(tickets, 0.95), 1) if tickets else None,
        "guests": len(desktop_ids),
        "errors": errors,
        "seconds": round(elapsed, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--connections", type=int, default=20)
    parser.add_argument("--guests", type=int, default=3, help="real guests to spread the consoles over (1-4)")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--settle", type=float, default=30.0, help="seconds to let the guests started here boot "
                        "before measuring (their TCG boot takes the two cores; consoles open to running desktops)")
    args = parser.parse_args()
    with manager_with_real_guests("vdi-bench-console") as server:
        api = server.admin_api
        (real_host,) = [h["id"] for h in api.get("/hosts").json()["items"] if h["name"] == "vs-a"]
        desktops = api.get("/desktops", params={"per_page": 100}).json()["items"]
        real = sorted((d for d in desktops if d["host_id"] == real_host),
                      key=lambda d: (d["name"] != "carol-finance", d["name"]))
        chosen = []
        started = False
        for desk in real[:max(1, min(args.guests, 4))]:
            if desk["power_state"] != "up":
                api.post(f"/desktops/{desk['id']}/start").raise_for_status()
                started = True
            chosen.append(desk["id"])
        if started:
            time.sleep(args.settle)
        token = api.headers["Authorization"].removeprefix("Bearer ")
        print(json.dumps(asyncio.run(run(server.base_url, token, chosen, args.connections, args.seconds))))


if __name__ == "__main__":
    main()
