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

A lease is **renewing** while this manager saw its counter move within the last RENEWING_RENEWALS renewal periods
(the record's `renew_seconds`): the host is alive on the storage, so it is not fenced however silent its heartbeats
(oVirt's guard). The manager asks it instead to release its guests (`request_release`: `<dir>/<host>.release`
naming the counter read); the agent's records then say `released` once none runs (hypervisor_node.host_lease).
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
RENEWING_RENEWALS = 3  # a counter that moved within this many renewal periods is still being renewed
DEFAULT_RENEW_SECONDS = 2.0  # for a record that does not say (hypervisor_node.host_lease's default)


@dataclass(frozen=True)
class LeaseRecord:
    counter: int
    ttl_s: float
    renew_s: float = DEFAULT_RENEW_SECONDS
    released: bool = False  # the agent released its guests on a manager's request


@dataclass
class Seen:
    counter: int
    ttl_s: float
    since: float  # monotonic: when this manager first read this counter
    renew_s: float = DEFAULT_RENEW_SECONDS
    released: bool = False


@dataclass(frozen=True)
class LeaseVerdict:
    known: bool  # a record was read in this round
    expired: bool
    silent_s: float  # how long the counter has not moved, by our clock
    ttl_s: float
    remaining_s: float  # until it expires (margin included); 0 when expired
    renewing: bool = False  # read in this round and its counter moved lately: the host lives on the storage
    released: bool = False  # its last record says it released its guests on request
    counter: int = 0


def read_record(path: Path) -> LeaseRecord:
    """One lease record; raises OSError or ValueError when it cannot be read or makes no sense."""
    data = json.loads(path.read_text())
    counter, ttl = data["counter"], data["ttl_seconds"]
    renew = data.get("renew_seconds", DEFAULT_RENEW_SECONDS)
    if not isinstance(counter, int) or not isinstance(ttl, (int, float)) or ttl <= 0 \
            or not isinstance(renew, (int, float)) or renew <= 0:
        raise ValueError(f"{path}: counter {counter!r} / ttl_seconds {ttl!r} / renew_seconds {renew!r}")
    return LeaseRecord(counter, float(ttl), float(renew), data.get("released") is True)


def read_records(directory: Path, host_names: Iterable[str]) -> dict[str, LeaseRecord]:
    """Every host's lease record that could be read, in parallel, READ_TIMEOUT_SECONDS at most: a read that hangs (a
    hard NFS mount) is left behind on its daemon thread and counts as unread."""
    records: dict[str, LeaseRecord] = {}

    def read(name: str) -> None:
        try:
            records[name] = read_record(directory / f"{name}.lease")
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.debug("host lease of %s unreadable: %s", name, exc)

    threads = [threading.Thread(target=read, args=(name,), name="vdi-ha-lease-read", daemon=True)
               for name in host_names]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + READ_TIMEOUT_SECONDS
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))
    return dict(records)  # a copy: a late read must not count


class LeaseWatch:
    def __init__(self, directory: str, margin_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.directory = Path(directory)
        self.margin_s = margin_s
        self._clock = clock
        self._seen: dict[str, Seen] = {}
        self._read_now: set[str] = set()  # the hosts whose lease was read in the last observe()
        self._lock = threading.Lock()

    def observe(self, host_names: Iterable[str]) -> None:
        """Read every host's lease (read_records) and remember what changed."""
        read_now = read_records(self.directory, host_names)
        now = self._clock()
        with self._lock:
            for name, record in read_now.items():
                seen = self._seen.get(name)
                if seen is None or seen.counter != record.counter:
                    self._seen[name] = Seen(record.counter, record.ttl_s, now, record.renew_s, record.released)
                else:
                    seen.ttl_s, seen.renew_s, seen.released = record.ttl_s, record.renew_s, record.released
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
        renewing = read and silent < RENEWING_RENEWALS * seen.renew_s
        return LeaseVerdict(read, expired, silent, seen.ttl_s, remaining, renewing, read and seen.released,
                            seen.counter)

    def request_release(self, host_name: str, counter: int) -> bool:
        """Ask the host to release its guests: `<dir>/<host>.release` naming the lease counter read (atomic; on a
        thread, READ_TIMEOUT_SECONDS at most, as a hung storage must not hold the round up). Did it get written?"""
        done: list[bool] = []

        def write() -> None:
            path = self.directory / f"{host_name}.release"
            temporary = path.with_name(f".{path.name}.manager")
            try:
                temporary.write_text(json.dumps({"host": host_name, "counter": counter}))
                temporary.replace(path)
                done.append(True)
            except OSError as exc:
                log.warning("cannot ask host %s to release its guests (%s): %s", host_name, path, exc)

        thread = threading.Thread(target=write, name="vdi-ha-lease-release", daemon=True)
        thread.start()
        thread.join(READ_TIMEOUT_SECONDS)
        return bool(done)
