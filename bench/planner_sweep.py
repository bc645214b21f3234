"""A planner sweep on real TCG guests (issue 20): the default workload in remote mode at increasing user counts, each
desktop a real planner desktop (`vdi demo --image-variant planner` and `vdi serve`, tests.e2e.server), driven through
the manager's API by planner.runner; one VNC client per desktop reads the watermarks through the broker's console
tickets. Writes the report (HTML + PNG) and prints one JSON object:

    {"score", "runs": [{"users", "group_a_p95_s", "group_b_p95_s", "passed", ...}], "watermark_vs_guest_median_ms",
     "operations", "failed", "report", "seconds"}

Usage: python bench/planner_sweep.py [--users 2,4] [--iterations 1] [--think-time 2] [--report-dir DIR]
The guests are removed afterwards. Run it alone on the machine (flock /tmp/vdi-heavy.lock ...): 2 cores.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from planner.profiles import RunProfile, load_workload  # noqa: E402
from planner.report import write_report  # noqa: E402
from planner.runner import run_steps  # noqa: E402
from tests.e2e.server import manager_with_real_guests  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--users", default="2,4", help="user counts, comma-separated (default 2,4)")
    parser.add_argument("--iterations", type=int, default=1)
    parser.add_argument("--think-time", type=float, default=2.0)
    parser.add_argument("--mode", default="remote", choices=("local", "remote", "passive"))
    parser.add_argument("--report-dir", default=None, help="default: a new temporary directory")
    args = parser.parse_args()
    counts = sorted({int(c) for c in args.users.split(",")})
    started = time.monotonic()
    with manager_with_real_guests("vdi-planner-bench", demo_args=("--image-variant", "planner")) as server:
        api = server.api()
        (carol,) = api.get("/search", params={"q": "Vms: name = carol-finance"}).json()["items"]
        carol = api.get(f"/desktops/{carol['id']}").json()
        names = ["carol-finance"] + [f"planner-{i:02d}" for i in range(1, max(counts))]
        for name in names[1:]:
            made = api.post("/desktops/provision", json={
                "name": name, "template_version_id": carol["template_version_id"], "host_id": carol["host_id"],
                "console_protocols": carol["console_protocols"]})
            made.raise_for_status()
        query = "Vms: " + " or ".join(f"name = {n}" for n in names) + " sortby name"
        profile = RunProfile(users=max(counts), mode=args.mode, search=query, power_on_rate_per_min=30)
        workload = load_workload()
        workload.iterations, workload.think_time_s = args.iterations, args.think_time
        token = api.headers["Authorization"].split(" ", 1)[1]
        result = asyncio.run(run_steps(server.base_url, token, profile, workload, counts,
                                       f"bench sweep {','.join(map(str, counts))}"))
        report_dir = Path(args.report_dir or tempfile.mkdtemp(prefix="planner-report-"))
        page = write_report(result, report_dir)
    summary = result["summary"]
    print(json.dumps({"score": summary["scores"]["score"], "runs": summary["scores"]["runs"],
                      "watermark_vs_guest_median_ms": summary["watermark_vs_guest_median_ms"],
                      "operations": summary["operations"], "failed": summary["failed"],
                      "flagged": summary["flagged"], "admin": {k: {"count": v["count"], "seconds": v["seconds"]}
                                                               for k, v in summary["admin"].items()},
                      "report": page, "seconds": round(time.monotonic() - started, 1)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
