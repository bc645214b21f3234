"""The host's storage lease and self-fencing (issue 16 item 3; docs/ha.md, "Storage leases").

The agent renews a lease record of its host on the shared storage, `<lease dir>/<host name>.lease`, every
`renew_s`: a JSON object whose `counter` grows by one at each renewal, with the lease's `ttl_seconds` and the
`self_fence_after_seconds` this agent keeps to. The manager (ha_manager.host_leases) reads it and judges its age by
its own clock, from the moment it first read the current counter: no clock is compared between machines.

The promise the agent makes with `ttl_seconds`: once its last successful renewal AND its last heartbeat accepted by
a manager are both older than `self_fence_after_s` (less than the ttl), it powers off every guest it owns
(self-fencing, as Proxmox's watchdog or sanlock do), and keeps powering off any that runs, until one of the two works
again. The manager restarts a host's desktops on the strength of the lease only once the lease and the heartbeats
have both been silent for the ttl plus a margin, so by then the guests are off. Both ages are measured from when the
successful write or heartbeat *started*, the side that makes them older, so the agent errs towards fencing early.

**Release on request** (the guard "no fencing while the host still renews its storage lease"): a manager that finds
a host non-responsive while its lease still renews does not fence it; it writes `<lease dir>/<host name>.release`
naming the lease counter it read. An agent that has reached no manager for `self_fence_after_s` and reads a request
made within the last ttl's worth of its own renewals powers its guests off as above, and its lease records then say
`"released": true` (written atomically with the counter) while none runs, so the manager restarts them elsewhere
at once. A request is judged by the agent's own counter, no clock: a stale file says nothing. Without a request,
losing only the managers (a manager upgrade) changes nothing.

A renewal that hangs (a hard NFS mount whose server is away) does not hold the agent up: it runs on a thread of its
own, the next one is not started while it hangs, and the lease simply ages.
"""
from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import logging
import math
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from core.errors import Invalid, VdiError
from hypervisor_node.driver import NodeDriver

log = logging.getLogger("hypervisor_node.host_lease")

DEFAULT_RENEW_SECONDS = 2.0
DEFAULT_TTL_SECONDS = 20.0
CHECK_SECONDS = 0.25  # how often the self-fencing rule is checked


def lease_path(directory: str | os.PathLike[str], host_name: str) -> Path:
    return Path(directory) / f"{host_name}.lease"


def release_request_path(directory: str | os.PathLike[str], host_name: str) -> Path:
    """Where a manager asks a partitioned host that still renews its lease to release its guests."""
    return Path(directory) / f"{host_name}.release"


def read_release_request(path: Path) -> int | None:
    """The lease counter a release request names; None when there is none (or it makes no sense)."""
    try:
        counter = json.loads(path.read_text()).get("counter")
    except (OSError, ValueError, AttributeError):
        return None
    return counter if isinstance(counter, int) else None


class HostLease:
    """Renews the host's lease on the shared storage and self-fences when it has lost both it and the managers.

    `manager_contact` returns the monotonic time at which the last heartbeat a manager accepted was sent (None:
    never); without it (an agent with no manager) only the lease counts."""

    def __init__(self, driver: NodeDriver, host_name: str, directory: str | os.PathLike[str], *,
                 renew_s: float = DEFAULT_RENEW_SECONDS, ttl_s: float = DEFAULT_TTL_SECONDS,
                 self_fence_after_s: float | None = None,
                 manager_contact: Callable[[], float | None] | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self_fence_after_s = ttl_s / 2 if self_fence_after_s is None else self_fence_after_s
        if not 0 < renew_s < self_fence_after_s < ttl_s:
            raise Invalid(f"host lease: renew every {renew_s:g} s < self-fence after {self_fence_after_s:g} s < "
                          f"ttl {ttl_s:g} s must hold")
        self.driver = driver
        self.host_name = host_name
        self.path = lease_path(directory, host_name)
        self.request_path = release_request_path(directory, host_name)
        self.renew_s = renew_s
        self.ttl_s = ttl_s
        self.self_fence_after_s = self_fence_after_s
        self._manager_contact = manager_contact
        self._clock = clock
        self._started = clock()
        self.counter = self._last_counter()
        self.renewed_at: float | None = None  # monotonic start of the last successful renewal
        self.renewing = False  # a renewal is under way (or hangs)
        self.renewal_failing = False
        self.requested_at_counter: int | None = None  # the lease counter a manager's release request names
        self.released = False  # on request, no guest of ours runs: said in the lease records
        self.self_fenced: list[str] = []  # guests powered off by the current self-fencing episode
        self.unreported: dict[str, Any] | None = None  # the last self-fencing, until a manager has heard of it
        self._lock = threading.Lock()

    def _last_counter(self) -> int:
        """Carry on from the counter a previous agent of this host wrote, so a restart is a change, not a reset."""
        with contextlib.suppress(OSError, ValueError, TypeError, AttributeError):
            return int(json.loads(self.path.read_text()).get("counter", 0))
        return 0

    # ---- renewal ------------------------------------------------------------------------------------------------
    def renew(self) -> None:
        """Write the next record (blocking; raises OSError when the storage refuses). Atomic: a temporary file in
        the same directory, flushed to the storage, renamed over the lease."""
        started = self._clock()
        requested = read_release_request(self.request_path)
        counter = self.counter + 1
        record = {"host": self.host_name, "counter": counter, "ttl_seconds": self.ttl_s,
                  "self_fence_after_seconds": self.self_fence_after_s, "renew_seconds": self.renew_s,
                  "released": self.released,
                  "written_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="milliseconds")}
        temporary = self.path.with_name(f".{self.path.name}.{os.getpid()}")
        with open(temporary, "w") as out:
            json.dump(record, out)
            out.flush()
            os.fsync(out.fileno())
        os.replace(temporary, self.path)
        with self._lock:
            self.counter = counter
            self.renewed_at = started
            self.requested_at_counter = requested

    def _renew_in_thread(self) -> None:
        try:
            self.renew()
            if self.renewal_failing:
                log.warning("host lease %s renewed again", self.path)
            self.renewal_failing = False
        except OSError as exc:
            if not self.renewal_failing:
                log.error("cannot renew the host lease %s (%s); the guests are powered off %g s after the last "
                          "renewal unless a manager still hears the heartbeats", self.path, exc,
                          self.self_fence_after_s)
            self.renewal_failing = True
        finally:
            self.renewing = False

    def start_renewal(self) -> None:
        """Start a renewal on a thread of its own unless one is still under way (a hung storage)."""
        if self.renewing:
            return
        self.renewing = True
        threading.Thread(target=self._renew_in_thread, name="host-lease-renewal", daemon=True).start()

    # ---- self-fencing -------------------------------------------------------------------------------------------
    def ages(self) -> tuple[float, float]:
        """(seconds since the last successful renewal started, seconds since the last accepted heartbeat was sent);
        the agent's start stands for a renewal or heartbeat that never happened."""
        now = self._clock()
        with self._lock:
            renewed = self.renewed_at if self.renewed_at is not None else self._started
        contact = self._manager_contact() if self._manager_contact is not None else None
        lease_age = now - renewed
        manager_age = now - (contact if contact is not None else self._started) \
            if self._manager_contact is not None else float("inf")
        return lease_age, manager_age

    def release_requested(self) -> bool:
        """A manager asked for our guests (a request naming a counter within the last ttl's worth of renewals)."""
        with self._lock:
            asked, counter = self.requested_at_counter, self.counter
        return asked is not None and 0 <= counter - asked <= math.ceil(self.ttl_s / self.renew_s)

    def must_self_fence(self) -> bool:
        lease_age, manager_age = self.ages()
        if manager_age < self.self_fence_after_s:
            return False
        return lease_age >= self.self_fence_after_s or self.release_requested()

    def self_fence(self) -> list[str]:
        """Power off every running guest this agent owns; returns their names (blocking)."""
        stopped = []
        for domain in self.driver.list_domains():
            if domain.state == "down":
                continue
            try:
                self.driver.poweroff(domain.uuid)
                stopped.append(domain.name)
            except VdiError as exc:
                log.error("self-fencing: cannot power off %s: %s", domain.name, exc.message)
        return stopped

    def check(self) -> list[str]:
        """One check of the rule (blocking): the guests powered off now."""
        if not self.must_self_fence():
            self.released = False
            if self.self_fenced:
                log.warning("self-fencing over: the lease or a manager answers again (%d guest(s) stay off)",
                            len(self.self_fenced))
                self.self_fenced = []
            return []
        stopped = self.self_fence()
        on_request = self.release_requested()
        if stopped:
            lease_age, manager_age = self.ages()
            why = (f"a manager asked for the guests (its release request) and no manager for {manager_age:.1f} s"
                   if on_request else f"no lease renewal for {lease_age:.1f} s and no manager for {manager_age:.1f} s")
            log.critical("SELF-FENCING: %s (limit %g s, lease ttl %g s): powered off %s", why,
                         self.self_fence_after_s, self.ttl_s, ", ".join(stopped))
            self.self_fenced += stopped
            self.unreported = {"at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                               "guests": list(self.self_fenced), "lease_age_seconds": round(lease_age, 1),
                               "manager_age_seconds": round(manager_age, 1), "ttl_seconds": self.ttl_s,
                               "on_request": on_request}
        # released only once nothing of ours runs (a guest that would not power off keeps the lease unreleased)
        self.released = on_request and all(d.state == "down" for d in self.driver.list_domains())
        return stopped

    def delivered(self, report: dict[str, Any] | None) -> None:
        """A manager accepted a heartbeat carrying `report` (the self-fencing it said)."""
        if report is not None and self.unreported is report:
            self.unreported = None

    async def run(self) -> None:
        """Renew every renew_s and check the rule every CHECK_SECONDS, for the agent's lifetime."""
        next_renewal = 0.0
        while True:
            if self._clock() >= next_renewal:
                self.start_renewal()
                next_renewal = self._clock() + self.renew_s
            try:
                await asyncio.to_thread(self.check)
            except VdiError as exc:  # the hypervisor is away: nothing can run on it either
                log.debug("self-fencing check: %s", exc.message)
            await asyncio.sleep(CHECK_SECONDS)
