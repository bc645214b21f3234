"""The node agent: one per host, an HTTP API over the node driver plus a heartbeat to the manager.

Built on starlette + uvicorn directly (this package never imports fastapi, sqlalchemy or manager).
Every route needs `Authorization: Bearer <token>`; errors are `{"error": code, "detail": message}`
with the status of the core.errors class. Blocking hypervisor calls run in a thread pool.

Starting or stopping the agent never touches a guest: on start it lists the domains it owns and
reports them, with their real state, in its first heartbeat; on stop it only closes its connection.

Run it as `vdi node ...` (the manager's CLI calls main()) or `python -m hypervisor_node.agent`.
"""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import hmac
import json
import logging
import os
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any

import httpx
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from core.errors import BadRequest, Conflict, Invalid, NotAuthenticated, VdiError
from core.specs import DesktopSpec
from hypervisor_node import hoststats, spice_tls
from hypervisor_node.guest_facts import GuestFacts
from hypervisor_node.consoles import ConsoleReporter
from hypervisor_node.driver import DEFAULT_BLOCK_JOB_TIMEOUT_S, DEFAULT_MANAGER_ID, LibvirtDriver, NodeDriver
from hypervisor_node.host_lease import DEFAULT_RENEW_SECONDS, DEFAULT_TTL_SECONDS, HostLease
from hypervisor_node.managers import EpochFence, EpochFenceMiddleware, ManagerEndpoints

log = logging.getLogger("hypervisor_node.agent")

API_PREFIX = "/v1"
DEFAULT_HEARTBEAT_SECONDS = 5.0
GUEST_FACTS_EVERY_BEATS = 6  # guest facts are asked for every 6 heartbeat intervals (30 s by default)
DEFAULT_SHUTDOWN_TIMEOUT_S = 60
MAX_BODY_BYTES = 1024 * 1024
POWER_ACTIONS = ("start", "shutdown", "poweroff", "reboot", "suspend", "resume")


def utc_now_iso() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


# ---- authentication ---------------------------------------------------------------------------------
class BearerTokenMiddleware:
    """Refuse every request without the node token (constant-time comparison) with a JSON 401."""

    def __init__(self, app: ASGIApp, token: str) -> None:
        self.app = app
        self._token = token.encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        presented = b""
        for name, value in scope.get("headers", []):
            if name == b"authorization":
                scheme, _, credential = value.partition(b" ")
                if scheme.lower() == b"bearer":
                    presented = credential.strip()
                break
        if not hmac.compare_digest(presented, self._token):
            error = NotAuthenticated("send the node token as 'Authorization: Bearer <token>'")
            response = JSONResponse(error.to_dict(), status_code=error.status,
                                    headers={"WWW-Authenticate": "Bearer"})
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)


# ---- error rendering -------------------------------------------------------------------------------
async def _vdi_error(_request: Request, exc: Exception) -> Response:
    assert isinstance(exc, VdiError)
    if not exc.expected or exc.status >= 500:
        log.warning("%s: %s", exc.code, exc.message)
    return JSONResponse(exc.to_dict(), status_code=exc.status)


async def _http_error(_request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    codes = {404: "not_found", 405: "method_not_allowed"}
    detail = {404: "no such route; the agent's API lives under /v1",
              405: "this route does not take that method"}.get(exc.status_code, str(exc.detail))
    return JSONResponse({"error": codes.get(exc.status_code, "error"), "detail": detail},
                        status_code=exc.status_code)


async def _unexpected_error(_request: Request, exc: Exception) -> Response:
    log.exception("unexpected error in the node agent", exc_info=exc)
    return JSONResponse({"error": "error", "detail": "internal error in the node agent; see its log"},
                        status_code=500)


# ---- request helpers -------------------------------------------------------------------------------
async def _json_body(request: Request, required: bool = True) -> dict[str, Any]:
    raw = await request.body()
    if len(raw) > MAX_BODY_BYTES:
        raise BadRequest(f"request body exceeds {MAX_BODY_BYTES} bytes")
    if not raw.strip():
        if required:
            raise BadRequest("send a JSON object as the request body")
        return {}
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadRequest(f"the request body is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise BadRequest("the request body must be a JSON object")
    return body


def _field(body: dict[str, Any], name: str, kind: type | tuple[type, ...], default: Any = ...) -> Any:
    if name not in body:
        if default is ...:
            raise Invalid(f"field {name!r} is required")
        return default
    value = body[name]
    if isinstance(value, bool) and bool not in (kind if isinstance(kind, tuple) else (kind,)):
        raise Invalid(f"field {name!r} has the wrong type ({value!r})")
    if not isinstance(value, kind):
        raise Invalid(f"field {name!r} has the wrong type ({value!r})")
    return value


def spec_from_json(body: dict[str, Any], uuid: str) -> DesktopSpec:
    """A DesktopSpec from a PUT body; the path's uuid wins over (and must match) the body's."""
    data = dict(body)
    if data.setdefault("uuid", uuid) != uuid:
        raise Invalid(f"body uuid {data['uuid']!r} does not match the URL's {uuid!r}")
    try:
        return DesktopSpec.from_dict(data)
    except TypeError:
        missing = [name for name in ("name", "vcpus", "memory_mib", "disk_path") if name not in data]
        raise Invalid(f"the desktop spec lacks required field(s): {', '.join(missing) or '?'}") from None


# ---- the application --------------------------------------------------------------------------------
Handler = Callable[[Request], Awaitable[Response]]


def create_app(
    driver: NodeDriver,
    token: str,
    *,
    node_name: str = "node",
    heartbeat: "Heartbeat | None" = None,
    consoles: "ConsoleReporter | None" = None,
    spice_tls_dir: str | None = None,
    ksm_sys_root: str | None = None,
    lease: HostLease | None = None,
) -> Starlette:
    """The agent's ASGI app over `driver`; `heartbeat`, `consoles` (console clients reported to the manager) and
    `lease` (the host's storage lease and self-fencing), when given, run for the app's lifetime."""
    if not token:
        raise Invalid("the node token must not be empty")
    started_at = heartbeat.started_at if heartbeat is not None else utc_now_iso()
    # the leader epoch heard in heartbeat replies; commands of an older one are refused (docs/ha.md)
    fence = heartbeat.fence if heartbeat is not None else EpochFence()

    def call(fn: Callable[..., Any], *args: Any) -> Awaitable[Any]:
        return run_in_threadpool(fn, *args)

    async def health(_request: Request) -> Response:
        """Liveness of the agent and its hypervisor connection."""
        caps = await call(driver.capabilities)
        return JSONResponse({"status": "ok", "node": node_name, "agent_started_at": started_at,
                             "hostname": caps.hostname, "libvirt_version": caps.libvirt_version,
                             "leader_epoch": fence.highest})

    async def capabilities(_request: Request) -> Response:
        return JSONResponse((await call(driver.capabilities)).to_dict())

    async def list_domains(_request: Request) -> Response:
        domains = await call(driver.list_domains)
        return JSONResponse({"domains": [{"uuid": d.uuid, "name": d.name, "state": d.state,
                                          "desktop_id": d.desktop_id} for d in domains]})

    async def disks(_request: Request) -> Response:
        """Every defined domain's disk files, ours or not: what the manager's storage clean-up must keep."""
        found = await call(driver.domain_disks)
        return JSONResponse({"domains": [{"uuid": uuid, "paths": paths} for uuid, paths in sorted(found.items())]})

    async def resize(request: Request) -> Response:
        """New vCPUs and/or memory for the running domain where libvirt can; says per field: live | next_boot."""
        body = await _json_body(request)
        vcpus = _field(body, "vcpus", int, None)
        memory_mib = _field(body, "memory_mib", int, None)
        applied = await call(driver.resize, request.path_params["uuid"], vcpus, memory_mib)
        return JSONResponse({"applied": applied})

    async def get_domain(request: Request) -> Response:
        return JSONResponse((await call(driver.get_domain, request.path_params["uuid"])).to_dict())

    async def define(request: Request) -> Response:
        spec = spec_from_json(await _json_body(request), request.path_params["uuid"])
        return JSONResponse((await call(driver.define, spec)).to_dict())

    async def undefine(request: Request) -> Response:
        await call(driver.undefine, request.path_params["uuid"])
        return Response(status_code=204)

    async def power(request: Request) -> Response:
        uuid, action = request.path_params["uuid"], request.path_params["action"]
        if action not in POWER_ACTIONS:
            raise HTTPException(404)
        if action == "shutdown":
            body = await _json_body(request, required=False)
            timeout = _field(body, "timeout", (int, float), DEFAULT_SHUTDOWN_TIMEOUT_S)
            info = await call(driver.shutdown, uuid, timeout)
        else:
            info = await call(getattr(driver, action), uuid)
        return JSONResponse(info.to_dict())

    async def migrate(request: Request) -> Response:
        body = await _json_body(request)
        uuid = request.path_params["uuid"]
        dest_uri = _field(body, "dest_uri", str)
        migrate_uri = _field(body, "migrate_uri", str, None)
        await call(driver.migrate, uuid, dest_uri, migrate_uri)
        return JSONResponse({"uuid": uuid, "dest_uri": dest_uri, "migrated": True})

    async def ticket(request: Request) -> Response:
        body = await _json_body(request)
        password = _field(body, "password", str)
        valid_seconds = _field(body, "valid_seconds", int, 120)
        valid_to = await call(driver.set_ticket, request.path_params["uuid"], password, valid_seconds)
        return JSONResponse({"valid_to": valid_to})

    async def cut_consoles(request: Request) -> Response:
        return JSONResponse(await call(driver.cut_consoles, request.path_params["uuid"]))

    async def screenshot(request: Request) -> Response:
        try:
            screen = int(request.query_params.get("screen", "0"))
        except ValueError:
            raise Invalid("query parameter screen must be an integer") from None
        png = await call(driver.screenshot, request.path_params["uuid"], screen)
        return Response(png, media_type="image/png")

    async def stats(_request: Request) -> Response:
        return JSONResponse({"domains": [s.to_dict() for s in await call(driver.bulk_stats)]})

    async def guest(request: Request) -> Response:
        body = await _json_body(request)
        command = _field(body, "command", str)
        timeout = _field(body, "timeout", (int, float), 5.0)
        reply = await call(driver.guest_call, request.path_params["uuid"], command, timeout)
        return JSONResponse({"reply": reply})

    async def snapshot(request: Request) -> Response:
        body = await _json_body(request)
        overlay = _field(body, "overlay", str)
        chain = await call(driver.snapshot_disk, request.path_params["uuid"], overlay)
        return JSONResponse({"chain": chain})

    async def keys(request: Request) -> Response:
        """Press keys together on the domain's keyboard (e.g. Ctrl+Alt+Del), as a person at its console would."""
        body = await _json_body(request)
        keycodes = _field(body, "keycodes", list)
        hold_ms = _field(body, "hold_ms", int, 50)
        await call(driver.send_key, request.path_params["uuid"], keycodes, hold_ms)
        return Response(status_code=204)

    async def put_spice_tls(request: Request) -> Response:
        """The host's SPICE TLS certificate, key and CA (hypervisor_node.spice_tls), from the manager."""
        written = await call(spice_tls.install, spice_tls_dir, await _json_body(request))
        return JSONResponse({"directory": spice_tls_dir, "files": written})

    async def put_ksm(request: Request) -> Response:
        """The host's KSM settings from the policy engine (hoststats.write_ksm): only an agent started with
        --ksm-control manages them; one kernel has one KSM, so on a machine running several agents (the test
        harness's network-namespace hosts) at most one may."""
        if ksm_sys_root is None:
            raise Conflict(f"node {node_name} does not manage KSM (start its agent with --ksm-control)")
        body = await _json_body(request)
        return JSONResponse({"ksm": await call(hoststats.write_ksm, body, ksm_sys_root)})

    async def blockcommit(request: Request) -> Response:
        body = await _json_body(request, required=False)
        top = _field(body, "top", (str, type(None)), None)
        base = _field(body, "base", (str, type(None)), None)
        timeout = _field(body, "timeout", (int, float), DEFAULT_BLOCK_JOB_TIMEOUT_S)
        chain = await call(driver.block_commit, request.path_params["uuid"], top, base, timeout)
        return JSONResponse({"chain": chain})

    p = API_PREFIX
    routes = [
        Route(f"{p}/health", health, methods=["GET"]),
        Route(f"{p}/capabilities", capabilities, methods=["GET"]),
        Route(f"{p}/domains", list_domains, methods=["GET"]),
        Route(f"{p}/stats", stats, methods=["GET"]),
        Route(f"{p}/spice-tls", put_spice_tls, methods=["PUT"]),
        Route(f"{p}/ksm", put_ksm, methods=["PUT"]),
        Route(f"{p}/disks", disks, methods=["GET"]),
        Route(f"{p}/domains/{{uuid}}", get_domain, methods=["GET"]),
        Route(f"{p}/domains/{{uuid}}", define, methods=["PUT"]),
        Route(f"{p}/domains/{{uuid}}", undefine, methods=["DELETE"]),
        Route(f"{p}/domains/{{uuid}}/screenshot", screenshot, methods=["GET"]),
        Route(f"{p}/domains/{{uuid}}/migrate", migrate, methods=["POST"]),
        Route(f"{p}/domains/{{uuid}}/ticket", ticket, methods=["POST"]),
        Route(f"{p}/domains/{{uuid}}/cut-consoles", cut_consoles, methods=["POST"]),
        Route(f"{p}/domains/{{uuid}}/guest", guest, methods=["POST"]),
        Route(f"{p}/domains/{{uuid}}/snapshot", snapshot, methods=["POST"]),
        Route(f"{p}/domains/{{uuid}}/blockcommit", blockcommit, methods=["POST"]),
        Route(f"{p}/domains/{{uuid}}/keys", keys, methods=["POST"]),
        Route(f"{p}/domains/{{uuid}}/resize", resize, methods=["POST"]),
        Route(f"{p}/domains/{{uuid}}/{{action}}", power, methods=["POST"]),
    ]

    @contextlib.asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[None]:
        tasks = [asyncio.create_task(loop.run(), name=name)
                 for name, loop in (("heartbeat", heartbeat), ("consoles", consoles), ("host-lease", lease))
                 if loop is not None]
        try:
            yield
        finally:
            for task in tasks:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            # Only the connection is closed: running guests are left exactly as they are.
            await run_in_threadpool(driver.close)

    app = Starlette(
        routes=routes,
        exception_handlers={VdiError: _vdi_error, HTTPException: _http_error, Exception: _unexpected_error},
        lifespan=lifespan,
    )
    app.add_middleware(EpochFenceMiddleware, fence=fence)
    app.add_middleware(BearerTokenMiddleware, token=token)  # added last: runs first
    return app


# ---- heartbeat ------------------------------------------------------------------------------------------
class Heartbeat:
    """Every `interval` s, POST host and domain figures to `{manager}/api/v1/nodes/{node}/heartbeat`, where
    `manager_url` is one manager or several (a comma-separated string, a list, or a shared ManagerEndpoints): a
    manager that cannot be reached or answers with a server error is replaced by the next one in the same beat.

    Body: {"seq", "agent_started_at", "caps", "cpu_usage", "mem_usage", "domains": [DomainStats...],
    "guest": {uuid: facts}} where "guest" holds the guest facts (hypervisor_node.guest_facts) that changed since the
    manager last took them; its agent asks each running guest every GUEST_FACTS_EVERY_BEATS intervals.
    A manager that stops answering is logged once at WARNING, its recovery once at INFO; single
    attempts are logged at DEBUG only. The first beat, sent at once, reports every domain we own with
    its real state: that is how a restarted agent hands its running guests back to the manager.
    """

    def __init__(
        self,
        driver: NodeDriver,
        node_name: str,
        manager_url: "str | Sequence[str] | ManagerEndpoints",
        token: str,
        interval: float = DEFAULT_HEARTBEAT_SECONDS,
        *,
        proc_root: str = "/proc",
        transport: httpx.AsyncBaseTransport | None = None,
        request_timeout: float = 10.0,
    ) -> None:
        if interval <= 0:
            raise Invalid(f"heartbeat interval must be positive, got {interval}")
        self.driver = driver
        self.node_name = node_name
        self.managers = ManagerEndpoints.of(manager_url)
        self.path = f"/api/v1/nodes/{node_name}/heartbeat"
        self.interval = interval
        self.started_at = utc_now_iso()
        self.seq = 0
        self.manager_reachable: bool | None = None  # None until the first attempt
        self.hypervisor_reachable: bool | None = None
        self.failures = 0
        self._token = token
        self._proc_root = proc_root
        self._cpu = hoststats.HostCpuMeter(proc_root)
        self._transport = transport
        self._request_timeout = request_timeout
        self.fence = EpochFence()  # learns the leader epoch from each reply
        self.accepted_sent_at: float | None = None  # monotonic start of the last beat a manager accepted
        self.lease: HostLease | None = None  # its self-fencing reports ride on the heartbeats
        self.guest_facts = GuestFacts(driver, period=interval * GUEST_FACTS_EVERY_BEATS)

    @property
    def url(self) -> str:
        """Where heartbeats go now."""
        return f"{self.managers.current}{self.path}"

    def build_payload(self) -> dict[str, Any]:
        """One heartbeat body (blocking: calls the hypervisor). Raises VdiError when it is unreachable."""
        caps = self.driver.capabilities()
        domains = self.driver.bulk_stats()
        self.guest_facts.set_running({d.uuid for d in domains if d.state == "up"})
        self.seq += 1
        return {
            "seq": self.seq,
            "agent_started_at": self.started_at,
            "caps": caps.to_dict(),
            "cpu_usage": self._cpu.usage(),
            "mem_usage": hoststats.read_mem_usage(self._proc_root),
            "domains": [d.to_dict() for d in domains],
            "guest": self.guest_facts.unsent(),
            "leader_epoch": self.fence.highest,  # so a manager re-creating a lost lease row starts above it
        }

    async def beat(self, client: httpx.AsyncClient) -> bool:
        """Build and send one heartbeat; True when the manager accepted it. Never raises VdiError."""
        sent_at = time.monotonic()
        try:
            payload = await run_in_threadpool(self.build_payload)
        except VdiError as exc:
            self._hypervisor_state(False, exc.message)
            return False
        self._hypervisor_state(True, "")
        self_fenced = self.lease.unreported if self.lease is not None else None
        if self_fenced is not None:
            payload["self_fenced"] = self_fenced
        if self.seq == 1:
            states: dict[str, int] = {}
            for dom in payload["domains"]:
                states[dom["state"]] = states.get(dom["state"], 0) + 1
            log.info("reporting %d owned domain(s) to the manager: %s", len(payload["domains"]),
                     ", ".join(f"{n} {s}" for s, n in sorted(states.items())) or "none")
        try:
            response = await self.managers.post(client, self.path, json=payload,
                                                headers={"Authorization": f"Bearer {self._token}"})
        except httpx.HTTPError as exc:
            self._manager_state(False, f"{type(exc).__name__}: {exc}")
            return False
        if response.status_code >= 300:
            self._manager_state(False, f"HTTP {response.status_code}: {response.text[:300]}")
            return False
        self._manager_state(True, "")
        self.accepted_sent_at = sent_at
        if self.lease is not None:
            self.lease.delivered(self_fenced)
        self.guest_facts.delivered(payload["guest"])
        try:
            self.fence.learn(response.json().get("leader_epoch"))
        except (ValueError, AttributeError):  # an older manager's reply without it
            pass
        return True

    async def run(self) -> None:
        facts = asyncio.create_task(self.guest_facts.run(), name="guest-facts")
        try:
            async with httpx.AsyncClient(transport=self._transport, timeout=self._request_timeout) as client:
                while True:
                    await self.beat(client)
                    await asyncio.sleep(self.interval)
        finally:
            facts.cancel()

    def _manager_state(self, ok: bool, reason: str) -> None:
        if ok:
            if self.manager_reachable is False:
                log.info("manager at %s accepts heartbeats again after %d failed attempt(s)",
                         self.url, self.failures)
            self.failures = 0
        else:
            self.failures += 1
            if self.manager_reachable is not False:
                log.warning("cannot deliver heartbeats to %s (%s); retrying every %s s quietly",
                            self.url, reason, self.interval)
            else:
                log.debug("heartbeat %d to %s failed: %s", self.seq, self.url, reason)
        self.manager_reachable = ok

    def _hypervisor_state(self, ok: bool, reason: str) -> None:
        if ok and self.hypervisor_reachable is False:
            log.info("hypervisor answers again; heartbeats resume")
        if not ok and self.hypervisor_reachable is not False:
            log.warning("hypervisor unavailable (%s); no heartbeat until it answers", reason)
        self.hypervisor_reachable = ok


# ---- entry point ------------------------------------------------------------------------------------------
def parse_listen(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise argparse.ArgumentTypeError(f"--listen takes ADDR:PORT such as 127.0.0.1:8081, got {value!r}")
    return host.strip("[]"), int(port)


def build_parser(prog: str = "vdi node") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description="Run the hypervisor node agent for one host.")
    parser.add_argument("--name", required=True, help="this host's name as the manager knows it")
    parser.add_argument("--libvirt-uri", default="qemu:///system", help="libvirt connection URI")
    parser.add_argument("--listen", type=parse_listen, default=("127.0.0.1", 8081), metavar="ADDR:PORT",
                        help="address of the agent's HTTP API (default 127.0.0.1:8081)")
    parser.add_argument("--manager", default="", metavar="URL[,URL...]",
                        help="the managers' base URLs, comma-separated: heartbeats go to the first that answers "
                             "and move on to the next when it stops answering; empty: no heartbeat")
    parser.add_argument("--token", default=os.environ.get("VDI_NODE_TOKEN", ""),
                        help="bearer token shared with the manager (default: $VDI_NODE_TOKEN)")
    parser.add_argument("--heartbeat-seconds", type=float, default=DEFAULT_HEARTBEAT_SECONDS,
                        help=f"seconds between heartbeats (default {DEFAULT_HEARTBEAT_SECONDS:g})")
    parser.add_argument("--manager-id", default=os.environ.get("VDI_MANAGER_ID", DEFAULT_MANAGER_ID),
                        help="ownership stamp written into our domains' metadata "
                             f"(default: $VDI_MANAGER_ID or {DEFAULT_MANAGER_ID!r})")
    parser.add_argument("--domain-types", default=os.environ.get("VDI_NODE_DOMAIN_TYPES", ""),
                        help="comma-separated domain types to offer, e.g. 'qemu' where nested KVM fails "
                             "(default: all libvirt reports)")
    parser.add_argument("--trust-shared-storage", action="store_true",
                        help="the image directory is shared storage libvirt cannot recognise (not NFS/GFS2/"
                             "Ceph): allow live migration anyway")
    parser.add_argument("--validate-xml", action="store_true",
                        help="have libvirt validate every domain XML against its schema (slower defines)")
    parser.add_argument("--spice-tls-dir", default="", metavar="DIR",
                        help="where the manager's SPICE TLS files go: the spice_tls_x509_cert_dir of this host's "
                             "qemu.conf (with spice_tls = 1; libvirtd needs the directory to exist when it "
                             "starts); empty: no SPICE TLS")
    parser.add_argument("--lease-dir", default="", metavar="DIR",
                        help="a directory on the shared storage (the same for every host) where this host renews "
                             "its storage lease, <DIR>/<name>.lease; with it the agent powers its guests off when it "
                             "has lost both the lease and the managers (self-fencing), and the manager may restart "
                             "them elsewhere once the lease has expired. Empty: no lease (docs/ha.md)")
    parser.add_argument("--lease-renew-seconds", type=float, default=DEFAULT_RENEW_SECONDS,
                        help=f"how often the lease is renewed (default {DEFAULT_RENEW_SECONDS:g})")
    parser.add_argument("--lease-ttl-seconds", type=float, default=DEFAULT_TTL_SECONDS,
                        help="the lease's time to live, as promised to the manager: the guests are off before "
                             f"it runs out (default {DEFAULT_TTL_SECONDS:g})")
    parser.add_argument("--self-fence-after-seconds", type=float, default=None,
                        help="power the guests off once the lease and the heartbeats have both failed this long; "
                             "less than the ttl (default: half the ttl)")
    parser.add_argument("--ksm-control", action="store_true",
                        help="let the manager's policy engine set this host's KSM settings (/sys/kernel/mm/ksm); "
                             "one kernel has one KSM: never on two agents of one machine")
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Parse arguments and serve until interrupted. Returns the process exit status."""
    import uvicorn

    args = build_parser().parse_args(argv)
    if not args.token:
        print("error: give --token or set VDI_NODE_TOKEN: the agent refuses to run without one",
              file=sys.stderr)
        return 2
    if args.heartbeat_seconds <= 0:
        print("error: --heartbeat-seconds must be positive", file=sys.stderr)
        return 2
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    domain_types = [t.strip() for t in args.domain_types.split(",") if t.strip()] or None
    driver = LibvirtDriver(args.libvirt_uri, manager_id=args.manager_id, domain_types=domain_types,
                           trust_shared_storage=args.trust_shared_storage, validate_xml=args.validate_xml)
    heartbeat = consoles = lease = None
    if args.manager:
        managers = ManagerEndpoints(args.manager)
        heartbeat = Heartbeat(driver, args.name, managers, args.token, args.heartbeat_seconds)
        consoles = ConsoleReporter(driver, args.name, managers, args.token)
    if args.lease_dir:
        try:
            lease = HostLease(driver, args.name, args.lease_dir, renew_s=args.lease_renew_seconds,
                              ttl_s=args.lease_ttl_seconds, self_fence_after_s=args.self_fence_after_seconds,
                              manager_contact=(lambda: heartbeat.accepted_sent_at) if heartbeat is not None else None)
        except Invalid as exc:
            print(f"error: {exc.message}", file=sys.stderr)
            return 2
        if heartbeat is not None:
            heartbeat.lease = lease
    app = create_app(driver, args.token, node_name=args.name, heartbeat=heartbeat, consoles=consoles,
                     spice_tls_dir=args.spice_tls_dir or None,
                     ksm_sys_root="/sys" if args.ksm_control else None, lease=lease)
    host, port = args.listen
    log.info("node agent %s serving on %s:%d for %s", args.name, host, port, args.libvirt_uri)
    uvicorn.run(app, host=host, port=port, log_level=args.log_level.lower(), access_log=False,
                timeout_graceful_shutdown=5)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
