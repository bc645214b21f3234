"""Console clients coming and going, reported to the manager: what makes a console session real.

The driver's GraphicsWatch hands over libvirt's graphics events (one per SPICE channel or VNC connection). This
module keeps, per domain, the clients that passed authentication and are still there, and reports only the
transitions a session cares about: the first client attached (attached: true) and the last one left (attached:
false). Reports go to `{manager}/api/v1/nodes/{node}/console-events` with the node token as they happen; the ones
the manager did not take are kept, in order, and sent again (a bounded backlog: the oldest are dropped first).

Not known after an agent restart: clients attached before it (QEMU does not replay them). The manager then keeps
the last state it was told until the next event.
"""
from __future__ import annotations

import asyncio
import collections
import datetime as dt
import logging
import threading
from typing import Any

import httpx
from starlette.concurrency import run_in_threadpool

from hypervisor_node.driver import GraphicsEvent, GraphicsWatch, LibvirtDriver
from hypervisor_node.managers import ManagerEndpoints

log = logging.getLogger(__name__)
MAX_BACKLOG = 10_000
RETRY_SECONDS = 5.0


class ConsoleReporter:
    """Turns graphics events into attached/detached reports and delivers them to the manager."""

    def __init__(self, driver: LibvirtDriver, node_name: str, manager_url: "str | ManagerEndpoints", token: str, *,
                 retry_seconds: float = RETRY_SECONDS, transport: httpx.AsyncBaseTransport | None = None) -> None:
        self.managers = ManagerEndpoints.of(manager_url)  # shared with the heartbeat: both follow a failover
        self.path = f"/api/v1/nodes/{node_name}/console-events"
        self.retry_seconds = retry_seconds
        self.watch = GraphicsWatch(driver, self.record)
        self._token = token
        self._transport = transport
        self._clients: dict[str, set[str]] = collections.defaultdict(set)  # uuid -> attached client addresses
        self._backlog: collections.deque[dict[str, Any]] = collections.deque(maxlen=MAX_BACKLOG)
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake: asyncio.Event | None = None
        self._failing = False

    @property
    def url(self) -> str:
        return f"{self.managers.current}{self.path}"

    def record(self, event: GraphicsEvent) -> None:
        """One graphics event (libvirt's event thread): queue a report when the domain's first client attached or
        its last one left."""
        with self._lock:
            clients = self._clients[event.uuid]
            before = bool(clients)
            if event.phase == "initialize":
                clients.add(event.client)
            elif event.phase == "disconnect":
                clients.discard(event.client)
            elif event.phase == "stopped":  # the domain stopped: its clients are gone, unreported by QEMU
                clients.clear()
            after = bool(clients)
            if not clients:
                self._clients.pop(event.uuid, None)
            if before == after:
                return
            self._backlog.append({"desktop_id": event.uuid, "attached": after, "protocol": event.protocol,
                                  "client": event.client.rsplit(":", 1)[0] if event.client else "",
                                  "at": dt.datetime.now(dt.timezone.utc).isoformat()})
        log.info("console client %s desktop %s", "attached to" if after else "left", event.uuid)
        if self._loop is not None and self._wake is not None:
            self._loop.call_soon_threadsafe(self._wake.set)

    def pending(self) -> list[dict[str, Any]]:
        with self._lock:
            return list(self._backlog)

    async def deliver(self, client: httpx.AsyncClient) -> bool:
        """Send the backlog; True when it is empty afterwards."""
        events = self.pending()
        if not events:
            return True
        try:
            response = await self.managers.post(client, self.path, json={"events": events},
                                                headers={"Authorization": f"Bearer {self._token}"})
            ok, reason = response.status_code < 300, f"HTTP {response.status_code}: {response.text[:300]}"
        except httpx.HTTPError as exc:
            ok, reason = False, f"{type(exc).__name__}: {exc}"
        if not ok:
            if not self._failing:
                log.warning("cannot deliver console events to %s (%s); retrying every %s s quietly", self.url,
                            reason, self.retry_seconds)
            self._failing = True
            return False
        if self._failing:
            log.info("console events reach %s again", self.url)
        self._failing = False
        with self._lock:
            for _ in range(min(len(events), len(self._backlog))):
                self._backlog.popleft()  # the delivered ones are the oldest: new ones were appended after them
        return not self._backlog

    async def run(self) -> None:
        self._loop, self._wake = asyncio.get_running_loop(), asyncio.Event()
        try:
            async with httpx.AsyncClient(transport=self._transport, timeout=10.0) as client:
                while True:
                    await run_in_threadpool(self.watch.ensure)
                    delivered = await self.deliver(client)
                    self._wake.clear()
                    if delivered and self.pending():
                        continue  # new events came during the delivery
                    try:
                        await asyncio.wait_for(self._wake.wait(), self.retry_seconds)
                    except asyncio.TimeoutError:
                        pass
        finally:
            await run_in_threadpool(self.watch.close)
