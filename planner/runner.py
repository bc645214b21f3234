"""Running a workload against a manager (docs/planner.md "Runner"): `vdi planner run` and `vdi planner sweep`.

Everything goes through the manager's REST API with a bearer token: desktops are chosen by the search language,
started at a staggered rate, each gets its operations in a seeded random order with think time, run by its guest agent
(POST /desktops/{id}/planner/op); in remote and passive modes a console is opened on each desktop through the broker
(a single-use ticket, the browser console's WebSocket) and its framebuffer watched for the watermarks. A failed
operation is retried 3 times, then its application is dropped for that desktop and the desktop flagged; a watchdog
ends a desktop's workload when one operation runs past 3 x the longest expected operation, keeping what it measured."""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx

from planner.profiles import Operation, RunProfile, Workload, load_run, load_workload
from planner.results import summarise
from planner.rfb import FramebufferViewer, Refused, console_url, open_framebuffer_viewer
from planner.scoring import PlannerInputError

RETRIES = 3
WATCHDOG_FACTOR = 3
MARK_WAIT_S = 5.0  # how long the client waits for an end mark after the guest answered
HOST_SAMPLE_S = 2.0
API = "/api/v1"


class PlannerApiError(Exception):
    """The manager refused or failed a call; the message says which and why."""


class ManagerApi:
    def __init__(self, base_url: str, token: str, timeout: float = 60.0) -> None:
        self.base_url = base_url.rstrip("/")
        self.client = httpx.AsyncClient(base_url=self.base_url + API, timeout=timeout,
                                        headers={"Authorization": f"Bearer {token}"})

    async def close(self) -> None:
        await self.client.aclose()

    async def call(self, method: str, path: str, *, timeout: float | None = None, **kwargs: Any) -> Any:
        extra = {"timeout": timeout} if timeout is not None else {}
        try:
            response = await self.client.request(method, path, **kwargs, **extra)
        except httpx.HTTPError as exc:
            raise PlannerApiError(f"{method} {path}: {exc.__class__.__name__}: {exc}") from None
        if response.status_code >= 400:
            try:
                detail = response.json().get("detail", response.text)
            except ValueError:
                detail = response.text
            raise PlannerApiError(f"{method} {path}: {response.status_code} {detail}")
        return response.json() if response.content and "json" in response.headers.get("content-type", "") else None

    async def wait_job(self, job: dict, timeout: float = 1800.0) -> dict:
        deadline = time.monotonic() + timeout
        while job["state"] in ("pending", "running"):
            if time.monotonic() > deadline:
                raise PlannerApiError(f"job {job['id']} ({job['kind']}) still {job['state']} after {timeout:.0f} s")
            await asyncio.sleep(1.0)
            job = await self.call("GET", f"/jobs/{job['id']}")
        return job


def desktop_query(profile: RunProfile) -> str:
    if profile.search:
        return profile.search
    if profile.pool:
        return f"Vms: pool = {profile.pool} sortby name"
    return f"Vms: name = {profile.name_prefix}* sortby name"


async def select_desktops(api: ManagerApi, profile: RunProfile, users: int) -> list[dict]:
    found = await api.call("GET", "/search", params={"q": desktop_query(profile), "page_size": 500})
    if found["kind"] != "desktop":
        raise PlannerInputError(f"the desktops' search {desktop_query(profile)!r} finds {found['object']}s, not "
                                "desktops (start it with Vms:)")
    items = sorted(found["items"], key=lambda d: d["name"])
    if len(items) < users:
        raise PlannerInputError(f"{users} users need {users} desktops; {desktop_query(profile)!r} finds "
                                f"{len(items)}")
    return [await api.call("GET", f"/desktops/{d['id']}") for d in items[:users]]


@dataclass
class DesktopState:
    desktop: dict
    seq: int = 0
    dropped: set[str] = field(default_factory=set)
    op_started: float | None = None  # monotonic time of the running operation's start (None while thinking)
    current: tuple[Operation, int, int] | None = None  # (operation, iteration, seq) running now
    viewer: FramebufferViewer | None = None

    def next_seq(self) -> int:
        self.seq = self.seq % 999 + 1  # 1..999, wrapping (docs/planner.md: consecutive operations differ)
        return self.seq


class Run:
    """One run of a workload at one user count."""

    def __init__(self, api: ManagerApi, profile: RunProfile, workload: Workload, users: int) -> None:
        self.api, self.profile, self.workload, self.users = api, profile, workload, users
        self.samples: list[dict] = []
        self.flagged: dict[str, list[str]] = {}
        self.watchdog: list[str] = []
        self.host_stats: list[dict] = []
        self.admin: dict[str, dict] = {}
        self.t0 = time.monotonic()

    def now(self) -> float:
        return time.monotonic() - self.t0

    # ---- host figures ---------------------------------------------------------------------------------------
    async def sample_hosts(self) -> None:
        while True:
            try:
                hosts = await self.api.call("GET", "/hosts", params={"per_page": 100})
                for host in hosts["items"]:
                    self.host_stats.append({"host": host["name"], "t": round(self.now(), 2),
                                            "cpu": host["cpu_usage"], "mem": host["mem_usage"]})
            except PlannerApiError:
                pass  # a missed point; the figure shows the gap
            await asyncio.sleep(HOST_SAMPLE_S)

    # ---- admin operations -----------------------------------------------------------------------------------
    async def power_on_storm(self, desktops: list[dict], rate_per_min: float) -> None:
        """Start the desktops that are not running, one every 60/rate s, and time each until its agent answers."""
        down = [d for d in desktops if d["power_state"] != "up"]
        started = time.monotonic()
        times, errors = [], []

        async def one(desktop: dict, delay: float) -> None:
            await asyncio.sleep(delay)
            begun = time.monotonic()
            try:
                await self.api.call("POST", f"/desktops/{desktop['id']}/start")
                await self.wait_agent(desktop)
                times.append(time.monotonic() - begun)
            except PlannerApiError as exc:
                errors.append(f"{desktop['name']}: {exc}")

        await asyncio.gather(*(one(d, i * 60.0 / rate_per_min) for i, d in enumerate(down)))
        if down:
            self.admin["power_on_storm"] = _admin_figures(len(down), time.monotonic() - started, times, errors)
        if errors:
            raise PlannerApiError("power-on storm: " + "; ".join(errors))

    async def wait_agent(self, desktop: dict, timeout: float = 600.0) -> dict[str, list[str]]:
        deadline = time.monotonic() + timeout
        while True:
            try:
                return (await self.api.call("GET", f"/desktops/{desktop['id']}/planner/apps", timeout=30))["apps"]
            except PlannerApiError as exc:
                if time.monotonic() > deadline:
                    raise PlannerApiError(f"desktop {desktop['name']}'s planner agent did not answer within "
                                          f"{timeout:.0f} s: {exc}") from None
                await asyncio.sleep(2.0)

    async def open_console(self, desktop: dict) -> FramebufferViewer:
        got = await self.api.call("POST", f"/desktops/{desktop['id']}/browser-console")
        # 8-bit pixels: a quarter of raw 32-bit's bytes, closer to what a compressing client would carry
        viewer = await open_framebuffer_viewer(console_url(self.api.base_url, got["ws_path"], got["ticket"]),
                                               compact=True)
        await viewer.start()
        return viewer

    async def logon_storm(self, states: list[DesktopState], rate_per_s: float) -> None:
        """Open a console on every desktop through the broker (a ticket each), one every 1/rate s; each logon is
        timed from the ticket's request to the first full framebuffer."""
        started = time.monotonic()
        times, errors = [], []

        async def one(state: DesktopState, delay: float) -> None:
            await asyncio.sleep(delay)
            begun = time.monotonic()
            try:
                state.viewer = await self.open_console(state.desktop)
                await state.viewer.read_message()  # the first (full) framebuffer update
                times.append(time.monotonic() - begun)
            except (PlannerApiError, Refused, OSError) as exc:
                errors.append(f"{state.desktop['name']}: {exc}")

        await asyncio.gather(*(one(s, i / rate_per_s) for i, s in enumerate(states)))
        self.admin["logon_storm"] = _admin_figures(len(states), time.monotonic() - started, times, errors)
        if errors:
            raise PlannerApiError("logon storm: " + "; ".join(errors))

    async def logoff_storm(self, states: list[DesktopState]) -> None:
        started = time.monotonic()
        times, errors = [], []

        async def one(state: DesktopState) -> None:
            begun = time.monotonic()
            try:
                await self.api.call("POST", f"/desktops/{state.desktop['id']}/browser-console/disconnect")
                if state.viewer is not None:
                    await state.viewer.ws.close()
                times.append(time.monotonic() - begun)
            except (PlannerApiError, OSError) as exc:
                errors.append(f"{state.desktop['name']}: {exc}")

        await asyncio.gather(*(one(s) for s in states))
        self.admin["logoff_storm"] = _admin_figures(len(states), time.monotonic() - started, times, errors)

    async def reimage(self, desktops: list[dict]) -> None:
        """Re-image the desktops (a fresh overlay each, powered off first) and time the jobs to their end."""
        started = time.monotonic()
        jobs = [await self.api.call("POST", f"/desktops/{d['id']}/reimage", json={"power_off": True})
                for d in desktops]
        done = await asyncio.gather(*(self.api.wait_job(j) for j in jobs))
        errors = [f"{j['description']}: {j['error']}" for j in done if j["state"] != "succeeded"]
        self.admin["reimage"] = _admin_figures(len(desktops), time.monotonic() - started, [], errors)

    async def provision(self, pool_name: str, count: int) -> None:
        pools = await self.api.call("GET", "/search", params={"q": f"Pools: name = {pool_name}"})
        if not pools["items"]:
            raise PlannerInputError(f"admin.provision: no pool named {pool_name!r}")
        pool = await self.api.call("GET", f"/pools/{pools['items'][0]['id']}")
        started = time.monotonic()
        job = await self.api.call("POST", f"/pools/{pool['id']}/resize", json={"size": pool["size"] + count})
        job = await self.api.wait_job(job)
        errors = [job["error"]] if job["state"] != "succeeded" else []
        self.admin["provision"] = _admin_figures(count, time.monotonic() - started, [], errors)

    # ---- the workload ---------------------------------------------------------------------------------------
    async def run_operation(self, state: DesktopState, op: Operation, iteration: int) -> None:
        """One operation with its retries: a sample when it succeeds, or a failed sample after RETRIES retries (its
        application is then dropped for this desktop and the desktop flagged)."""
        name = state.desktop["name"]
        timeout = min(300.0, WATCHDOG_FACTOR * 2 * self.workload.longest_expected_s)
        error = ""
        for attempt in range(1, RETRIES + 2):
            seq = state.next_seq()
            started = self.now()
            state.op_started, state.current = time.monotonic(), (op, iteration, seq)
            try:
                result = await self.api.call(
                    "POST", f"/desktops/{state.desktop['id']}/planner/op", timeout=timeout + 30,
                    json={"app": op.app, "op": op.name, "seq": seq, "code": op.code, "timeout_s": timeout})
            except PlannerApiError as exc:
                result, error = None, str(exc)
            finally:
                state.op_started = None
            if result is not None and result["ok"]:
                seen = None
                if state.viewer is not None and self.profile.mode == "remote":
                    seen = await state.viewer.wait_for(seq, MARK_WAIT_S)
                sample = self._sample(name, iteration, seq, op, started, result["guest_s"],
                                      seen.seconds if seen is not None else None, True, attempt, "")
                sample["end_mark_seen"] = seen is not None and seen.code == op.code
                self.samples.append(sample)
                return
            if result is not None:
                error = result["reason"] or "failed"
        state.dropped.add(op.app)
        self.flagged.setdefault(name, []).append(f"{op.app} dropped after {op.label} failed {RETRIES + 1} times: "
                                                  f"{error}")
        self.samples.append(self._sample(name, iteration, seq, op, started, None, None, False, RETRIES + 1, error))

    def _sample(self, desktop: str, iteration: int, seq: int, op: Operation, started: float, guest_s: float | None,
                client_s: float | None, ok: bool, attempts: int, error: str) -> dict:
        return {"users": self.users, "desktop": desktop, "iteration": iteration, "seq": seq, "app": op.app,
                "operation": op.name, "group": op.group, "code": op.code, "started_s": round(started, 4),
                "guest_s": guest_s, "client_s": client_s, "end_mark_seen": False, "ok": ok, "attempts": attempts,
                "error": error[:2000]}

    async def desktop_workload(self, state: DesktopState, delay: float) -> None:
        await asyncio.sleep(delay)  # ramp-up
        name = state.desktop["name"]
        for iteration in range(self.workload.iterations):
            for index, op in enumerate(self.workload.iteration_order(name, iteration)):
                if op.app in state.dropped:
                    continue
                await self.run_operation(state, op, iteration)
                await asyncio.sleep(self.workload.think_time(name, iteration, index))

    async def watch(self, tasks: dict[str, asyncio.Task], states: dict[str, DesktopState]) -> None:
        """The watchdog: a desktop whose operation has run past WATCHDOG_FACTOR x the longest expected operation is
        ended; what it measured before is kept, the stuck operation is recorded as failed."""
        limit = WATCHDOG_FACTOR * self.workload.longest_expected_s
        while any(not t.done() for t in tasks.values()):
            for name, task in tasks.items():
                state = states[name]
                if not task.done() and state.op_started is not None and time.monotonic() - state.op_started > limit:
                    task.cancel()
                    self.watchdog.append(name)
                    op, iteration, seq = state.current  # type: ignore[misc]
                    self.samples.append(self._sample(name, iteration, seq, op, state.op_started - self.t0, None,
                                                     None, False, 1, f"watchdog: still running after {limit:g} s"))
                    self.flagged.setdefault(name, []).append(f"workload ended by the watchdog during {op.label}")
            await asyncio.sleep(0.5)

    async def execute(self, desktops: list[dict]) -> None:
        profile = self.profile
        sampler = asyncio.create_task(self.sample_hosts())
        readers: list[asyncio.Task] = []
        try:
            if "provision" in profile.admin:
                spec = profile.admin["provision"]
                await self.provision(str(spec.get("pool", profile.pool or "")), int(spec.get("count", 1)))
            rate = float(profile.admin.get("power_on_storm", {}).get("rate_per_min", profile.power_on_rate_per_min))
            await self.power_on_storm(desktops, rate)
            for desktop in desktops:
                await self.wait_agent(desktop)
            states = {d["name"]: DesktopState(d) for d in desktops}
            if profile.mode in ("remote", "passive"):
                rate_s = float(profile.admin.get("logon_storm", {}).get("rate_per_s", 2.0))
                await self.logon_storm(list(states.values()), rate_s)
                readers = [asyncio.create_task(s.viewer.run()) for s in states.values() if s.viewer is not None]
            self.t0 = time.monotonic()  # the workload's clock: samples' started_s count from here
            self.host_stats.clear()
            ramp = profile.ramp_up_s / max(1, len(states))
            tasks = {name: asyncio.create_task(self.desktop_workload(state, i * ramp))
                     for i, (name, state) in enumerate(states.items())}
            await self.watch(tasks, states)
            for name, task in tasks.items():
                if not task.cancelled() and task.exception() is not None:
                    self.flagged.setdefault(name, []).append(f"workload failed: {task.exception()}")
            if profile.mode in ("remote", "passive"):
                await self.logoff_storm(list(states.values()))
            if "reimage" in profile.admin:
                await self.reimage(desktops)
        finally:
            sampler.cancel()
            for reader in readers:
                reader.cancel()
            await asyncio.gather(sampler, *readers, return_exceptions=True)


def _admin_figures(count: int, seconds: float, times: list[float], errors: list[str]) -> dict:
    times = sorted(times)
    return {"count": count, "seconds": round(seconds, 3), "rate_per_s": round(count / seconds, 3) if seconds else None,
            "median_s": round(times[len(times) // 2], 3) if times else None,
            "max_s": round(times[-1], 3) if times else None, "errors": len(errors),
            "error_messages": errors[:20]}


def _profile_dict(profile: RunProfile, workload: Workload) -> dict:
    return {"run": asdict(profile), "workload": {"name": workload.name, "seed": workload.seed,
                                                 "iterations": workload.iterations, "mix": workload.mix,
                                                 "think_time_s": workload.think_time_s,
                                                 "operations": [asdict(op) for op in workload.operations]}}


async def run_steps(base_url: str, token: str, profile: RunProfile, workload: Workload, user_counts: list[int],
                    name: str) -> dict:
    """Run the workload at each user count in turn and store the whole as one run; returns its export (with id)."""
    api = ManagerApi(base_url, token)
    try:
        samples: list[dict] = []
        summary: dict[str, Any] = {"flagged": {}, "watchdog": [], "admin": {}, "host_stats": []}
        for users in user_counts:
            desktops = await select_desktops(api, profile, users)
            run = Run(api, profile, workload, users)
            await run.execute(desktops)
            offset = max((s["started_s"] for s in samples), default=0.0)
            for sample in run.samples:
                samples.append({**sample, "started_s": round(sample["started_s"] + offset, 4)})
            summary["flagged"].update({f"{k} ({users} users)": v for k, v in run.flagged.items()})
            summary["watchdog"] += [f"{k} ({users} users)" for k in run.watchdog]
            summary["admin"].update({f"{k} ({users} users)" if len(user_counts) > 1 else k: v
                                     for k, v in run.admin.items()})
            summary["host_stats"] += [{**p, "t": p["t"] + offset} for p in run.host_stats]
        body = {"name": name, "mode": profile.mode, "users": max(user_counts), "threshold_a_s": profile.threshold_a_s,
                "threshold_b_s": profile.threshold_b_s, "definition": profile.definition,
                "profile": _profile_dict(profile, workload), "summary": summary, "samples": samples}
        stored = await api.call("POST", "/planner/runs", json=body)
        summary.update(summarise(samples, profile.threshold_a_s, profile.threshold_b_s, profile.definition))
        return {"id": stored["id"], "report_url": api.base_url + stored["report"], **body}
    finally:
        await api.close()


# ---- the commands ---------------------------------------------------------------------------------------------------
def _connection(args: argparse.Namespace) -> tuple[str, str]:
    token = args.token or os.environ.get("VDI_TOKEN", "")
    if not token:
        raise PlannerInputError("give an API token with --token or VDI_TOKEN (an account holding planner:run)")
    return args.manager, token


def _profiles(args: argparse.Namespace) -> tuple[RunProfile, Workload]:
    profile = load_run(args.profile)
    for key in ("mode", "users"):
        if getattr(args, key, None) is not None:
            setattr(profile, key, getattr(args, key))
    if getattr(args, "iterations", None) is not None:
        workload = load_workload(args.workload or profile.workload)
        workload.iterations = args.iterations
    else:
        workload = load_workload(args.workload or profile.workload)
    if getattr(args, "think_time", None) is not None:
        workload.think_time_s = args.think_time
    return profile, workload


def _finish(args: argparse.Namespace, result: dict) -> int:
    if args.report_dir:
        from planner.report import write_report  # matplotlib: only when a report is written here

        write_report(result, Path(args.report_dir))
    scores = result["summary"]["scores"]
    print(json.dumps({"id": result["id"], "report": result["report_url"], "score": scores["score"],
                      "runs": scores["runs"], "failed": result["summary"]["failed"],
                      "watermark_vs_guest_median_ms": result["summary"]["watermark_vs_guest_median_ms"],
                      "flagged": result["summary"]["flagged"]}, indent=2))
    return 0


def _cmd_run(args: argparse.Namespace) -> int:
    try:
        base_url, token = _connection(args)
        profile, workload = _profiles(args)
        result = asyncio.run(run_steps(base_url, token, profile, workload, [profile.users],
                                       args.name or f"{profile.mode} x{profile.users}"))
    except (PlannerInputError, PlannerApiError) as exc:
        print(f"vdi planner run: {exc}", file=sys.stderr)
        return 2
    return _finish(args, result)


def _cmd_sweep(args: argparse.Namespace) -> int:
    try:
        base_url, token = _connection(args)
        profile, workload = _profiles(args)
        counts = sorted({int(c) for c in args.users_list.split(",") if c.strip()})
        if not counts or counts[0] < 1:
            raise PlannerInputError(f"--users-list must be positive whole numbers, got {args.users_list!r}")
        result = asyncio.run(run_steps(base_url, token, profile, workload, counts,
                                       args.name or f"sweep {profile.mode} {','.join(map(str, counts))}"))
    except (PlannerInputError, PlannerApiError, ValueError) as exc:
        print(f"vdi planner sweep: {exc}", file=sys.stderr)
        return 2
    return _finish(args, result)


def add_commands(sub: argparse._SubParsersAction) -> None:
    for name, func, text in (("run", _cmd_run, "run a workload at the run profile's user count"),
                             ("sweep", _cmd_sweep, "run a workload at increasing user counts and score them")):
        p = sub.add_parser(name, help=text, description=text + "; results are stored in the manager "
                           "(GET /api/v1/planner/runs/{id}/report) and printed as JSON.")
        p.add_argument("--manager", default=os.environ.get("VDI_URL", "http://127.0.0.1:8000"),
                       help="the manager's URL (VDI_URL; default http://127.0.0.1:8000)")
        p.add_argument("--token", help="API token (default VDI_TOKEN)")
        p.add_argument("--profile", help="run profile YAML (default: the package's)")
        p.add_argument("--workload", help="workload profile YAML (default: the run profile's)")
        p.add_argument("--mode", choices=("local", "remote", "passive"))
        p.add_argument("--iterations", type=int)
        p.add_argument("--think-time", type=float, help="seconds between operations (overrides the mix's)")
        p.add_argument("--name", help="the run's name")
        p.add_argument("--report-dir", help="also write report.html and its PNG figures here")
        if name == "run":
            p.add_argument("--users", type=int)
        else:
            p.add_argument("--users-list", required=True, help="user counts, comma-separated, e.g. 2,4,6")
        p.set_defaults(func=func)
