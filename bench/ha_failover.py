"""Benchmark HA failover (issue 16); prints one JSON object.

The program is a set of parts, each a function that measures one kind of failover and returns its figures; the
JSON object is their union. `--parts` picks some (default: all).

- "manager": several `vdi serve` on one Postgres database (tests/harness/managers.py), the shipping lease timings
  (VDI_HA_LEASE_TTL_SECONDS 15, VDI_HA_LEASE_RENEW_SECONDS 5; change them with --ttl/--renew). The leader is
  SIGKILLed; `manager_takeover_s` is the time from the kill until the standby says it leads AND has answered a new
  request (a user created through it), the worst of `--runs` runs; each run's figure is listed.
- "hosts" (host failover: `desktops`, `detect_s`, `fence_s`, `all_running_s`, `lost`, `ran_twice`): a part of its
  own, added next to this one.

Goal (issue 16): manager takeover <= 15 s.
Usage: python bench/ha_failover.py [--parts manager] [--runs 3] [--ttl 15] [--renew 5]
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.harness.managers import ManagerGroup, wait_for  # noqa: E402
from tests.harness.postgres import fresh_database  # noqa: E402


# ---- manager takeover ----------------------------------------------------------------------------------------------
def _takeover_once(database_url: str, workdir: Path, args: argparse.Namespace, run: int) -> float:
    group = ManagerGroup(database_url, workdir, ttl_s=args.ttl, renew_s=args.renew, quiet_s=args.ttl)
    try:
        group.start(f"a{run}")
        group.start(f"b{run}")
        leader = wait_for("one leader", lambda: (found := group.leaders()) and len(found) == 1 and found[0], 120)
        standby = next(name for name in group.managers if name != leader)
        group.token  # logged in before the kill: the measurement is the takeover, not a login
        group.kill(leader)
        killed = time.monotonic()

        def serves() -> bool:
            if group.role(standby) != "leader":
                return False
            made = group.api(standby, "POST", "/users",
                             json={"username": f"after-takeover-{run}", "password": "pw-123456789"}, timeout=5)
            return made.status_code == 201
        wait_for("the standby leading and serving", serves, bound_s=10 * args.ttl, every_s=0.05)
        return time.monotonic() - killed
    finally:
        group.close()


def manager_takeover(args: argparse.Namespace) -> dict[str, Any]:
    runs = []
    with tempfile.TemporaryDirectory(prefix="vdi-bench-ha-") as tmp:
        for run in range(args.runs):
            with fresh_database("vdi_bench_ha") as url:  # a fresh lease each run: the first leader is epoch 1
                runs.append(_takeover_once(url, Path(tmp) / f"run{run}", args, run))
    return {"manager_takeover_s": round(max(runs), 2),
            "manager_takeover": {"runs_s": [round(r, 2) for r in runs], "median_s": round(statistics.median(runs), 2),
                                 "lease_ttl_s": args.ttl, "lease_renew_s": args.renew}}


# ---- the parts -----------------------------------------------------------------------------------------------------
PARTS: dict[str, Callable[[argparse.Namespace], dict[str, Any]]] = {
    "manager": manager_takeover,
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated, of {', '.join(PARTS)}")
    parser.add_argument("--runs", type=int, default=3, help="manager takeovers to measure")
    parser.add_argument("--ttl", type=float, default=15.0, help="VDI_HA_LEASE_TTL_SECONDS")
    parser.add_argument("--renew", type=float, default=5.0, help="VDI_HA_LEASE_RENEW_SECONDS")
    args = parser.parse_args(argv)
    parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    unknown = [p for p in parts if p not in PARTS]
    if unknown:
        parser.error(f"unknown parts {unknown}; known: {', '.join(PARTS)}")
    figures: dict[str, Any] = {}
    for part in parts:
        figures.update(PARTS[part](args))
    print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
