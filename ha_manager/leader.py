"""Manager HA (issue 16 item 6): one leader among several `vdi serve` processes on one database, and the fence that
keeps a former leader's singleton loops from writing.

The lease is one row of `manager_leader` (name, holder, epoch, expires_at). Each instance runs a `LeaderElector`
whose `tick()` is one pass (read, decide, compare-and-swap) and returns a sentence; its thread calls it every
`renew_s` (sooner when a standby knows when the lease runs out):

- a standby takes the row only when it has expired, by the database's clock:
  `UPDATE manager_leader SET holder = me, epoch = epoch + 1, ... WHERE name = :n AND epoch = :seen AND
  expires_at < :db_now`; the one instance whose update matched leads, with a new epoch;
- the leader renews with `UPDATE ... SET expires_at = :db_now + ttl WHERE name = :n AND holder = me AND
  epoch = :mine`; no row matched means another instance took over: it steps down at once. A leader that cannot
  reach the database steps down when its own clock says the lease has run out;
- an instance restarted under the same id (VDI_INSTANCE_ID set explicitly; the default id has the pid in it) takes
  its own unexpired lease at once (with a new epoch: whatever its previous process left running is fenced off), and
  a clean stop releases the lease so a standby takes over at its next poll instead of after the ttl.

No session advisory lock is involved: a partitioned leader's database session can outlive its lease by hours
(TCP keepalive defaults), a row with an expiry by the database's clock cannot.

**The fence.** The epoch is a fencing token. Every singleton loop tick runs inside `fenced(epoch)`; while it does,
the first write statement of each database transaction on that thread (ORM or Core, events included) is preceded
by `SELECT epoch FROM manager_leader WHERE name = :n AND epoch = :mine FOR SHARE`. No row: `NotLeader` is raised
and the transaction rolls back, nothing written. A row: it stays share-locked until the commit, so a takeover (an
UPDATE of that row) waits for the transaction to end and every later transaction of the old epoch is refused: a
leader paused past its lease (SIGSTOP, a long GC, a VM freeze) cannot write when it wakes up. The fenced
transaction also gets `idle_in_transaction_session_timeout` = ttl, so a leader frozen inside one cannot hold the
takeover back longer than that. On SQLite (the embedded single-instance set-up) the same code runs without the row
lock: SQLite has one writer at a time anyway.

Calls to node agents are fenced by the agents: NodeClient sends `fence_epoch()` with each call a loop makes, and an
agent that has heard of a newer epoch (from a heartbeat reply or the new leader's calls) refuses it with
`not_leader`, raised here as NotLeader (hypervisor_node/managers.py). See docs/ha.md.
"""
from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import datetime as dt
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from sqlalchemy import delete, event, func, select, text, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from core.errors import Conflict
from manager import db
from manager.models import ManagerInstance, ManagerLeader

log = logging.getLogger(__name__)

LEADERSHIP = "manager"  # the one leadership today: the manager's singleton loops
FORGET_INSTANCES_AFTER_S = 86400.0


class NotLeader(Conflict):
    code = "not_leader"
    msg_fmt = "write refused: epoch {epoch} no longer holds the manager leadership"


@dataclasses.dataclass(frozen=True)
class Term:
    """One leadership term of this instance: its epoch and when it began (database clock; monotonic here)."""
    epoch: int
    since: dt.datetime
    since_monotonic: float

    def led_for(self) -> float:
        return time.monotonic() - self.since_monotonic


db_now = db.clock  # the database's clock (every instance compares lease times on this one clock, never its own)


def _dialect_insert(session: Session):
    return (postgresql if db.is_postgres(session) else sqlite).insert


# ---- the fence ---------------------------------------------------------------------------------------------
_FENCE_EPOCH: contextvars.ContextVar[int | None] = contextvars.ContextVar("vdi_leader_epoch", default=None)
_FENCED_TRANSACTION = "vdi_fenced_transaction"
_WRITES = ("INSERT", "UPDATE", "DELETE", "MERGE")
_idle_limit_ms = 12_000  # set from the lease ttl by LeaderElector


def fence_epoch() -> int | None:
    """The epoch this thread's writes are fenced with (inside `fenced`), else None. NodeClient sends it to nodes."""
    return _FENCE_EPOCH.get()


@contextlib.contextmanager
def fenced(epoch: int) -> Iterator[None]:
    """Every database write made on this thread inside the block is refused (NotLeader) unless `epoch` is still the
    leader's. What singleton loops run their ticks in (SingletonLoop does it)."""
    token = _FENCE_EPOCH.set(epoch)
    try:
        yield
    finally:
        _FENCE_EPOCH.reset(token)


def _check_epoch(conn, cursor, epoch: int) -> None:
    """The fencing check, on the connection about to write, in its transaction (see the module's docstring)."""
    postgres = conn.dialect.name == "postgresql"
    if postgres:
        cursor.execute(f"SET LOCAL idle_in_transaction_session_timeout = {int(_idle_limit_ms)}")
    lock = " FOR SHARE" if postgres else ""
    cursor.execute(f"SELECT epoch FROM manager_leader WHERE name = '{LEADERSHIP}' AND epoch = {int(epoch)}{lock}")
    if cursor.fetchone() is None:
        raise NotLeader(epoch=epoch)


@event.listens_for(Engine, "before_cursor_execute")
def _fence_writes(conn, cursor, statement: str, _parameters, _context, _executemany) -> None:
    epoch = _FENCE_EPOCH.get()
    if epoch is None or not statement.lstrip()[:6].upper().startswith(_WRITES):
        return
    transaction = conn.get_transaction()
    if transaction is not None and conn.info.get(_FENCED_TRANSACTION) is transaction:
        return  # checked (and share-locked) earlier in this transaction
    _check_epoch(conn, cursor, epoch)
    conn.info[_FENCED_TRANSACTION] = transaction


# ---- the election ------------------------------------------------------------------------------------------
class LeaderElector:
    """This instance's side of the election. `tick()` is one pass; `start()` runs it on a daemon thread."""

    def __init__(self, instance_id: str, address: str, *, ttl_s: float = 12.0, renew_s: float = 4.0,
                 name: str = LEADERSHIP, fenced_idle_limit_s: float | None = None) -> None:
        """`fenced_idle_limit_s` (default: the ttl): a fenced transaction idle this long is ended by the server."""
        if not 0 < renew_s < ttl_s:
            raise ValueError(f"the lease must be renewed more often than it lasts (renew {renew_s} s, ttl {ttl_s} s)")
        global _idle_limit_ms
        _idle_limit_ms = int((fenced_idle_limit_s or ttl_s) * 1000)
        self.instance_id = instance_id
        self.address = address
        self.ttl_s = ttl_s
        self.renew_s = renew_s
        self.name = name
        self.refused_writes = 0  # fenced writes refused in this process (a former leader's loops)
        self.known_epoch: int | None = None  # the highest epoch seen in the lease row (told to node agents)
        self._term: Term | None = None
        self._renewed_monotonic = 0.0
        self._started_at: dt.datetime | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._next_wait = 0.0
        self._last_sentence = ""
        self._thread: threading.Thread | None = None
        self._seen_epoch = 0
        self._heard_epoch = 0  # the highest epoch node agents said they have heard (not told to other agents)

    # what the rest of the manager reads
    def term(self) -> Term | None:
        """The current term when this instance leads, else None."""
        with self._lock:
            return self._term

    def wake(self) -> None:
        """Run the next tick now (a fenced write was refused: find out whether we still lead)."""
        self._wake.set()

    def note_refused(self, exc: NotLeader) -> None:
        with self._lock:
            self.refused_writes += 1
        self.wake()

    # one pass
    def tick(self) -> str:
        became: Term | None = None
        lost = False
        self._seen_epoch = 0
        with db.session_scope() as session:
            postgres = db.is_postgres(session)
            if postgres:  # a takeover must not hang behind a frozen leader's share lock (it ends within the ttl)
                session.execute(text(f"SET LOCAL lock_timeout = {int(min(self.renew_s, 2.0) * 1000)}"))
            now = db_now(session)
            self._report_instance(session, now)
            term = self.term()
            with self._lock:
                heard = self._heard_epoch
            if term is not None and heard > term.epoch:
                # node agents have heard of a later epoch than ours (a restored database's older lease row): they
                # refuse our calls; give the term up and take a new one above it at once (our own lease)
                lost = True
                self._seen_epoch = term.epoch
                sentence = f"stepped down: node agents have heard of epoch {heard}, above epoch {term.epoch}"
                self._next_wait = 0.0
            elif term is not None:
                renewed = session.execute(
                    update(ManagerLeader)
                    .where(ManagerLeader.name == self.name, ManagerLeader.holder == self.instance_id,
                           ManagerLeader.epoch == term.epoch)
                    .values(renewed_at=now, expires_at=now + dt.timedelta(seconds=self.ttl_s),
                            holder_address=self.address)).rowcount
                if renewed:
                    self._seen_epoch = term.epoch
                    sentence = f"leader, epoch {term.epoch}, renewed until {self._fmt(now, self.ttl_s)}"
                    self._next_wait = self.renew_s
                    session.execute(delete(ManagerInstance).where(  # instances gone for a day leave the report
                        ManagerInstance.seen_at < now - dt.timedelta(seconds=FORGET_INSTANCES_AFTER_S)))
                else:
                    lost = True
                    row = session.get(ManagerLeader, self.name)
                    self._seen_epoch = row.epoch if row is not None else 0
                    sentence = (f"stepped down: epoch {term.epoch} was superseded by epoch {row.epoch} of "
                                f"{row.holder}" if row is not None else f"stepped down: the lease row is gone")
                    self._next_wait = self.renew_s
            else:
                sentence, became = self._try_acquire(session, now)
            with self._lock:
                recorded = max(self.known_epoch or 0, self._heard_epoch)
            if self._seen_epoch > recorded:  # recorded now, not at the next pass: the row could be lost meanwhile
                session.execute(update(ManagerInstance).where(ManagerInstance.id == self.instance_id)
                                .values(highest_epoch=self._seen_epoch))
        with self._lock:
            self.known_epoch = max(self.known_epoch or 0, self._seen_epoch) or None
            if lost:
                self._term = None
            elif term is not None:
                self._renewed_monotonic = time.monotonic()
            if became is not None:
                self._term = became
                self._renewed_monotonic = time.monotonic()
        return sentence

    def _try_acquire(self, session: Session, now: dt.datetime) -> tuple[str, Term | None]:
        row = session.get(ManagerLeader, self.name, populate_existing=True)
        self._seen_epoch = row.epoch if row is not None else 0
        expires = now + dt.timedelta(seconds=self.ttl_s)
        mine = dict(holder=self.instance_id, holder_address=self.address, acquired_at=now, renewed_at=now,
                    expires_at=expires)
        if row is None:
            # The row is new, or was lost (deleted, a partial restore): start above every epoch anyone has seen, so
            # the epoch never goes backwards (node agents refuse the calls of an older one)
            floor = self._highest_epoch_seen(session)
            epoch = floor + 1
            inserted = session.execute(_dialect_insert(session)(ManagerLeader).values(name=self.name, epoch=epoch,
                                                                                      **mine)
                                       .on_conflict_do_nothing()).rowcount
            if inserted:
                self._next_wait = self.renew_s
                self._seen_epoch = epoch
                how = "first leader" if floor == 0 else f"re-created the lost lease above epoch {floor}"
                return f"leader, epoch {epoch} ({how})", Term(epoch, now, time.monotonic())
            self._next_wait = 0.0
            return "standby: another instance created the lease first", None
        if row.expires_at >= now and row.holder != self.instance_id:
            # poll again just after it would run out, at the latest one renewal interval from now
            left = (row.expires_at - now).total_seconds()
            self._next_wait = min(self.renew_s, left + 0.05)
            return f"standby: {row.holder} leads with epoch {row.epoch} until {row.expires_at:%H:%M:%S}", None
        seen_epoch, seen_holder, seen_expiry = row.epoch, row.holder, row.expires_at
        # normally seen_epoch + 1; above any higher epoch seen elsewhere (a restored database's older row)
        epoch = max(seen_epoch, self._highest_epoch_seen(session)) + 1
        taken = session.execute(
            update(ManagerLeader)
            .where(ManagerLeader.name == self.name, ManagerLeader.epoch == seen_epoch,
                   (ManagerLeader.expires_at < now) | (ManagerLeader.holder == self.instance_id))
            .values(epoch=epoch, **mine)
            .execution_options(synchronize_session=False)).rowcount
        self._next_wait = self.renew_s
        if not taken:
            return "standby: another instance took the expired lease first", None
        self._seen_epoch = epoch
        how = "restarted, took its own lease" if seen_holder == self.instance_id else \
            f"took over from {seen_holder} (epoch {seen_epoch}, expired {seen_expiry:%H:%M:%S})"
        return f"leader, epoch {epoch}: {how}", Term(epoch, now, time.monotonic())

    def learn_epoch(self, epoch: object) -> None:
        """A leader epoch a node agent says it has heard (its heartbeat): recorded at the next pass, and a new term
        starts above it. It is not told to the other agents (known_epoch): an agent's stale figure must not make
        them refuse the leader that holds the row."""
        if isinstance(epoch, int) and not isinstance(epoch, bool) and epoch > 0:
            with self._lock:
                self._heard_epoch = max(self._heard_epoch, epoch)

    def _highest_epoch_seen(self, session: Session) -> int:
        """The highest epoch any instance recorded, this one knows, or a node agent reported."""
        recorded = session.scalar(select(func.max(ManagerInstance.highest_epoch))) or 0
        with self._lock:
            return max(int(recorded), self.known_epoch or 0, self._heard_epoch)

    def _report_instance(self, session: Session, now: dt.datetime) -> None:
        if self._started_at is None:
            self._started_at = now
        with self._lock:
            highest = max(self.known_epoch or 0, self._heard_epoch)
        values = dict(address=self.address, pid=os.getpid(), seen_at=now, highest_epoch=highest)
        session.execute(_dialect_insert(session)(ManagerInstance)
                        .values(id=self.instance_id, started_at=self._started_at, **values)
                        .on_conflict_do_update(index_elements=["id"],
                                               set_=dict(values, started_at=self._started_at)))

    @staticmethod
    def _fmt(now: dt.datetime, seconds: float) -> str:
        return f"{now + dt.timedelta(seconds=seconds):%H:%M:%S}"

    # the thread
    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="vdi-leader-election", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        failing = False
        while not self._stop.is_set():
            try:
                sentence = self.tick()
                if failing:
                    log.info("leader election reaches the database again")
                failing = False
            except Exception as exc:  # the database is away (or a frozen leader's fenced transaction holds the
                # lease row until the server ends it): keep trying; give the lease up when it has run out
                if not failing:
                    log.warning("leader election failed (%s: %s); retrying", type(exc).__name__,
                                str(exc).splitlines()[0][:200] if str(exc) else "")
                failing = True
                sentence = self._lapse()
                self._next_wait = min(self.renew_s, 1.0)
            key = sentence.split(" until ")[0]  # transitions are logged, not every renewal or poll
            if key != self._last_sentence.split(" until ")[0] and "renewed" not in key:
                log.info("manager %s: %s", self.instance_id, sentence)
            self._last_sentence = sentence
            self._wake.wait(self._next_wait)
            self._wake.clear()

    def _lapse(self) -> str:
        """Without the database: still the leader until the lease we last renewed runs out by our own clock."""
        with self._lock:
            term = self._term
            if term is not None and time.monotonic() - self._renewed_monotonic >= self.ttl_s:
                self._term = None
                return f"stepped down: could not renew epoch {term.epoch} within {self.ttl_s:g} s"
        return self._last_sentence

    def stop(self, *, release: bool = True) -> None:
        """Stop the thread; a leader hands its lease back (it expires now) so a standby takes over at its next poll."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        term = self.term()
        with self._lock:
            self._term = None
        if release and term is not None:
            try:
                with db.session_scope() as session:
                    session.execute(update(ManagerLeader).where(
                        ManagerLeader.name == self.name, ManagerLeader.holder == self.instance_id,
                        ManagerLeader.epoch == term.epoch).values(expires_at=db_now(session)))
                log.info("manager %s: released the lease (epoch %d)", self.instance_id, term.epoch)
            except Exception:  # it expires by itself within the ttl
                log.warning("could not release the lease; it runs out within %g s", self.ttl_s, exc_info=True)


# ---- singleton loops -----------------------------------------------------------------------------------------
class SingletonLoop:
    """A daemon thread that calls `tick()` every `period` s while this instance leads, inside `fenced(epoch)`,
    starting `quiet_s` after each takeover. Every instance has the thread; on a standby it only waits. A tick may
    return a sentence saying what it did: it is logged when it differs from the previous tick's."""

    def __init__(self, elector: LeaderElector, name: str, period: float, tick: Callable[[], Any], *,
                 quiet_s: float = 0.0) -> None:
        self.elector = elector
        self.name = name
        self.period = period
        self.quiet_s = quiet_s
        self._tick = tick
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"vdi-{name}", daemon=True)
        self._failing = False
        self._said: Any = None

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=30)

    def run_once(self) -> bool:
        """One tick if this instance leads and its quiet period is over; True when it ran to the end."""
        term = self.elector.term()
        if term is None or term.led_for() < self.quiet_s:
            return False
        try:
            with fenced(term.epoch):
                said = self._tick()
        except NotLeader as exc:
            log.warning("%s: %s; checking the leadership", self.name, exc.message)
            self.elector.note_refused(exc)
            return False
        except Exception:  # survive a database or node hiccup; log the transition, not every repeat
            if not self._failing:
                log.exception("%s failed; retrying every %.0f s", self.name, self.period)
            self._failing = True
            return False
        if self._failing:
            log.info("%s works again", self.name)
        self._failing = False
        if isinstance(said, str) and said != self._said:  # a tick's sentence, logged when it changes
            log.info("%s: %s", self.name, said)
        self._said = said
        return True

    def _run(self) -> None:
        while not self._stop.wait(self.period):
            self.run_once()
