"""The hosts' storage leases as the manager reads them (issue 16 item 3; the agent's side: hypervisor_node.host_lease).

Each node agent started with `--lease-dir` renews `<dir>/<host name>.lease` on the shared storage: a counter that grows
at every renewal and the `ttl_seconds` the agent promises (its guests are off before the lease has been silent that
long). The manager, with VDI_HA_HOST_LEASE_DIR set to the same directory (as this machine mounts it), reads every
host's record each HA round and remembers, per host, the counter and when it first read it, on its own monotonic
clock: no clock is compared between machines.

A host's lease has **expired** when this manager has read it successfully in this round, its counter has not moved
for `ttl_seconds + VDI_HA_HOST_LEASE_MARGIN_SECONDS` by this manager's clock, and no heartbeat came for that long
either. That is the proof the failover takes instead of a fence when fencing is impossible (no fence agent, or all
failed): restarts are timed to it (ha_manager.failover). A lease that cannot be read says nothing: the storage may
have failed on this side, so it never expires for that reason. The memory is the leader's own: after a takeover the
new leader starts counting from its first read, which can only make it wait longer.
"""
from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

READ_TIMEOUT_SECONDS = 2.0  # a lease read that hangs (a hard NFS mount) counts as unread this round


@dataclass(frozen=True)
class LeaseRecord:
    counter: int
    ttl_s: float


@dataclass
class Seen:
    counter: int
    ttl_s: float
    since: float  # monotonic: when this manager first read this counter


@dataclass(frozen=True)
class LeaseVerdict:
    known: bool  # a record was read in this round
    expired: bool
    silent_s: float  # how long the counter has not moved, by our clock
    ttl_s: float
    remaining_s: float  # until it expires (margin included); 0 when expired


def read_record(path: Path) -> LeaseRecord:
    """One lease record; raises OSError or ValueError when it cannot be read or makes no sense."""
    data = json.loads(path.read_text())
    counter, ttl = data["counter"], data["ttl_seconds"]
    if not isinstance(counter, int) or not isinstance(ttl, (int, float)) or ttl <= 0:
        raise ValueError(f"{path}: counter {counter!r} / ttl_seconds {ttl!r}")
    return LeaseRecord(counter, float(ttl))


class LeaseWatch:
    def __init__(self, directory: str, margin_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.directory = Path(directory)
        self.margin_s = margin_s
        self._clock = clock
        self._seen: dict[str, Seen] = {}
        self._read_now: set[str] = set()  # the hosts whose lease was read in the last observe()
        self._lock = threading.Lock()

    def observe(self, host_names: Iterable[str]) -> None:
        """Read every host's lease (in parallel, READ_TIMEOUT_SECONDS at most: a read that hangs is left behind on
        its daemon thread) and remember what changed."""
        records: dict[str, LeaseRecord] = {}

        def read(name: str) -> None:
            try:
                records[name] = read_record(self.directory / f"{name}.lease")
            except (OSError, ValueError, KeyError, TypeError) as exc:
                log.debug("host lease of %s unreadable: %s", name, exc)

        threads = [threading.Thread(target=read, args=(name,), name="vdi-ha-lease-read", daemon=True)
                   for name in host_names]
        for thread in threads:
            thread.start()
        deadline = time.monotonic() + READ_TIMEOUT_SECONDS
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        now = self._clock()
        read_now = dict(records)  # a copy: a late read must not count in this round
        with self._lock:
            for name, record in read_now.items():
                seen = self._seen.get(name)
                if seen is None or seen.counter != record.counter:
                    self._seen[name] = Seen(record.counter, record.ttl_s, now)
                else:
                    seen.ttl_s = record.ttl_s
            self._read_now = set(read_now)

    def verdict(self, host_name: str, heartbeat_age: float | None) -> LeaseVerdict:
        """Has the host's lease expired (see the module's docstring)?"""
        with self._lock:
            seen = self._seen.get(host_name)
            read = host_name in self._read_now
        if seen is None:
            return LeaseVerdict(False, False, 0.0, 0.0, float("inf"))
        silent = self._clock() - seen.since
        limit = seen.ttl_s + self.margin_s
        quiet_heartbeats = heartbeat_age is None or heartbeat_age >= limit
        expired = read and silent >= limit and quiet_heartbeats
        remaining = 0.0 if expired else max(limit - silent, limit - (heartbeat_age or 0.0), 0.0)
        return LeaseVerdict(read, expired, silent, seen.ttl_s, remaining)
