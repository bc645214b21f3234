"""Facts from inside the guests: addresses, host name, logged-in users and installed applications.

Every running domain we own is asked through its guest agent (hypervisor_node.guest_agent's line protocol:
`ip`, `hostname`, `user`, `apps`) when it is first seen running and then every `period` s; a guest whose agent
does not answer (still booting, no agent installed) is asked again after a growing pause, so silent guests cost
little. The heartbeat carries the facts that changed since the manager last took them (`unsent`, `delivered`):
steady guests add nothing to it, and a restarted agent sends everything once.

What the facts mean follows qemu-guest-agent: `ips` are every address of every interface but loopback
(guest-network-get-interfaces, IPv4 first), `users` are the users with a login session (guest-get-users: on the
demo desktop, who logged in on its console), `apps` the installed applications.
"""
from __future__ import annotations

import asyncio
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from starlette.concurrency import run_in_threadpool

from core.errors import VdiError
from hypervisor_node.driver import NodeDriver

log = logging.getLogger(__name__)

DEFAULT_PERIOD_S = 30.0
CALL_TIMEOUT_S = 3.0
MAX_RETRY_S = 600.0
WORKERS = 4  # guests asked at once: a silent one holds a worker for CALL_TIMEOUT_S per command
MAX_ITEMS = 64  # addresses, users or applications kept per guest
MAX_TEXT = 255


def parse_facts(replies: dict[str, str]) -> dict[str, Any]:
    """The agent's replies to ip, hostname, user and apps as the facts the heartbeat carries."""

    def answer(command: str) -> str:  # an agent that does not know a command answers "ERR ...": no fact
        reply = replies[command]
        return "" if reply.startswith("ERR ") else reply

    def items(command: str) -> list[str]:
        return [part.strip()[:MAX_TEXT] for part in answer(command).split(",") if part.strip()][:MAX_ITEMS]

    return {"ips": items("ip"), "hostname": answer("hostname").strip()[:MAX_TEXT],
            "users": items("user"), "apps": items("apps")}


class GuestFacts:
    """The latest facts of each running domain, and which of them the manager has not been sent yet."""

    def __init__(self, driver: NodeDriver, period: float = DEFAULT_PERIOD_S, timeout: float = CALL_TIMEOUT_S) -> None:
        self.driver = driver
        self.period = period
        self.timeout = timeout
        self._lock = threading.Lock()
        self._running: set[str] = set()
        self._latest: dict[str, dict[str, Any]] = {}
        self._sent: dict[str, dict[str, Any]] = {}
        self._due: dict[str, float] = {}  # uuid -> monotonic time of the next question
        self._failures: dict[str, int] = {}

    def set_running(self, uuids: set[str]) -> None:
        """The domains that run now (from the heartbeat's stats); others are forgotten."""
        with self._lock:
            self._running = set(uuids)
            for gone in set(self._due) - self._running:
                self._due.pop(gone, None)
                self._failures.pop(gone, None)
                self._latest.pop(gone, None)
                self._sent.pop(gone, None)
            now = time.monotonic()
            for uuid in self._running - set(self._due):
                self._due[uuid] = now

    def unsent(self) -> dict[str, dict[str, Any]]:
        """Facts that differ from what the manager last took, by domain uuid."""
        with self._lock:
            return {u: f for u, f in self._latest.items() if self._sent.get(u) != f}

    def delivered(self, facts: dict[str, dict[str, Any]]) -> None:
        """The manager took `facts` (a value unsent() returned)."""
        with self._lock:
            for uuid, value in facts.items():
                if uuid in self._latest:
                    self._sent[uuid] = value

    def poll_due(self, executor: ThreadPoolExecutor | None = None) -> int:
        """Ask every domain whose turn has come (blocking); returns how many answered."""
        now = time.monotonic()
        with self._lock:
            due = [u for u, at in self._due.items() if at <= now]
        if not due:
            return 0
        if executor is None:
            results = [self._ask(u) for u in due]
        else:
            results = list(executor.map(self._ask, due))
        return sum(results)

    def _ask(self, uuid: str) -> bool:
        try:
            replies = {c: self.driver.guest_call(uuid, c, self.timeout) for c in ("ip", "hostname", "user", "apps")}
            facts = parse_facts(replies)
        except VdiError as exc:
            with self._lock:
                failures = self._failures[uuid] = self._failures.get(uuid, 0) + 1
                if uuid in self._due:
                    self._due[uuid] = time.monotonic() + min(MAX_RETRY_S, self.period * 2 ** (failures - 1))
            log.debug("guest agent of %s did not answer (%s)", uuid, exc.message)
            return False
        with self._lock:
            if uuid in self._due:  # still running: keep what it said
                self._failures.pop(uuid, None)
                self._latest[uuid] = facts
                self._due[uuid] = time.monotonic() + self.period
        return True

    async def run(self, tick: float = 1.0) -> None:
        """Ask the guests whose turn has come, every `tick` s, until cancelled."""
        with ThreadPoolExecutor(max_workers=WORKERS, thread_name_prefix="guest-facts") as executor:
            while True:
                await run_in_threadpool(self.poll_due, executor)
                await asyncio.sleep(tick)
