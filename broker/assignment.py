"""Handing pool desktops to users, safely under a login storm.

`take_from_pool` returns, in this order: the user's dedicated desktop in the pool, the desktop the user
already holds in the pool, or a free one (running ones first). Guarantees, on Postgres:
- one desktop is never handed to two users: the free desktop is picked with SELECT ... FOR UPDATE SKIP
  LOCKED (concurrent requests take different rows instead of queueing) and claimed with a compare-and-swap
  UPDATE ... WHERE assigned_user_id IS NULL;
- one user never holds more than max_desktops_per_user desktops of a pool: the user's row is locked
  (FOR NO KEY UPDATE, which does not block foreign-key checks) for the transaction, so two concurrent
  connects of the same user are serialised and the second sees the first's desktop.
On SQLite (the embedded default) there are no row locks: callers wrap the transaction in
`assignment_guard(session)`, a process-wide lock held until the transaction commits; the same
compare-and-swap keeps even several processes from double-assigning.
The caller commits (sessions open and commit at the edges); every lock is released at that commit.
"""
from __future__ import annotations

import collections
import contextlib
import datetime as dt
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from sqlalchemy import and_, bindparam, case, exists, func, literal, or_, select, true, union_all, update
from sqlalchemy.orm import Session

from broker.entitlement import pool_entitlement
from broker.errors import PoolClosed, TooManyDesktops
from core import schedule
from core.enums import HostStatus, PoolType, PowerState, TaskState
from core.errors import NotFound, PoolFull
from core.ids import new_id
from manager.db import is_postgres
from manager.models import Assignment, Desktop, Host, Pool, User, utcnow

# Desktops in these task states can be handed out (a prestart in progress is fine: the broker waits for it).
ASSIGNABLE_TASKS = (TaskState.STARTING,)
_sqlite_lock = threading.Lock()


# What the broker needs of a desktop and of a pool. Assignment reads these columns, not ORM objects: the row of
# a SELECT or an UPDATE ... RETURNING answers attribute access like the ORM object does, at a fraction of the CPU.
DESKTOP_BRIEF = (Desktop.id, Desktop.name, Desktop.pool_id, Desktop.os_type, Desktop.console_protocols,
                 Desktop.power_state, Desktop.task_state, Desktop.ip, Desktop.host_id, Desktop.lease_until)
POOL_BRIEF = (Pool.id, Pool.name, Pool.pool_type, Pool.protocol_policy, Pool.window_start, Pool.window_end,
              Pool.schedule, Pool.time_zone, Pool.lease_seconds, Pool.max_desktops_per_user)


@dataclass(frozen=True)
class Assigned:
    desktop: Any  # a DESKTOP_BRIEF row, or a Desktop (a desktop asked for by id)
    how: str  # "dedicated" | "existing" | "new" | "direct"
    lease_until: dt.datetime | None = None

    @property
    def desktop_id(self) -> str:
        return self.desktop.id

    @property
    def newly_assigned(self) -> bool:
        return self.how == "new"


@contextlib.contextmanager
def assignment_guard(session: Session) -> Iterator[None]:
    """Serialise assignment transactions where the database has no row locks (SQLite). Use it around the
    assignment AND the commit; on Postgres it does nothing (row locks do the work)."""
    if is_postgres(session):
        yield
        return
    with _sqlite_lock:
        yield


def schedule_span(pool: Pool, now: dt.datetime) -> tuple[dt.datetime, dt.datetime] | None:
    """The open span of a time-based pool's recurring schedule that contains `now` (None: closed now, or no
    schedule)."""
    if pool.pool_type != PoolType.TIME_BASED or not pool.schedule:
        return None
    return schedule.open_span(schedule.parse(pool.schedule), pool.time_zone, now)


def closes_at(pool: Pool, now: dt.datetime) -> dt.datetime | None:
    """When an open time-based pool next closes: its absolute window's end or the end of its current recurring
    span, whichever comes first (None: it never closes)."""
    if pool.pool_type != PoolType.TIME_BASED:
        return None
    ends = [pool.window_end] if pool.window_end is not None else []
    span = schedule_span(pool, now)
    if span is not None:
        ends.append(span[1])
    return min(ends) if ends else None


def lease_end(pool: Pool, now: dt.datetime) -> dt.datetime | None:
    """When a time-based lease taken now ends: now + lease_seconds, cut at the pool's closing."""
    if pool.pool_type != PoolType.TIME_BASED:
        return None
    ends = []
    if pool.lease_seconds:
        ends.append(now + dt.timedelta(seconds=pool.lease_seconds))
    close = closes_at(pool, now)
    if close is not None:
        ends.append(close)
    return min(ends) if ends else None


def closed_reason(pool: Pool, now: dt.datetime) -> str | None:
    """Why a pool is closed at `now` (outside its absolute window, or outside its recurring opening hours), or
    None when it is open."""
    if pool.window_start is not None and now < pool.window_start:
        return f"opens at {pool.window_start.isoformat()}; try again then"
    if pool.window_end is not None and now >= pool.window_end:
        return f"closed at {pool.window_end.isoformat()}"
    if pool.pool_type == PoolType.TIME_BASED and pool.schedule and schedule_span(pool, now) is None:
        windows = schedule.parse(pool.schedule)
        opens = schedule.next_opening(windows, pool.time_zone, now)
        hours = "; ".join(w.describe() for w in windows)
        when = f"; it opens at {opens.astimezone(schedule.zone(pool.time_zone)).isoformat()}" if opens else ""
        return f"is closed now (open {hours}, {pool.time_zone}){when}"
    return None


def check_window(pool: Pool, now: dt.datetime) -> None:
    """Raises PoolClosed outside a time-based pool's window or opening hours."""
    reason = closed_reason(pool, now)
    if reason is not None:
        raise PoolClosed(pool=pool.name, reason=reason)


# The statements of a connect are built once, with bound parameters: building a SQLAlchemy statement costs more
# CPU than the database spends running it, and a login storm runs them hundreds of times a second.
def user_lock(user_id):
    """The user's row, locked FOR NO KEY UPDATE until the transaction ends (it does not block foreign-key checks):
    two connects of one user run one after the other. A statement of its own, or a scalar subquery that a caller's
    earlier query carries (then pass user_locked=True to take_from_pool)."""
    return select(User.id).where(User.id == user_id).with_for_update(key_share=True)


_LOCK_USER = user_lock(bindparam("user_id"))


def _mine(user_id, pool_id):
    """(id, held) of the desktops the user holds in the pool (held) and of their dedicated ones there (not held).
    Two index lookups (UNION ALL) rather than one OR, which Postgres can only answer by scanning the pool."""
    held_here = select(Desktop.id, literal(True).label("held")) \
        .where(Desktop.pool_id == pool_id, Desktop.assigned_user_id == user_id)
    dedicated_here = select(Desktop.id, literal(False)) \
        .join(Assignment, Assignment.desktop_id == Desktop.id) \
        .where(Assignment.user_id == user_id, Desktop.pool_id == pool_id,
               Desktop.assigned_user_id.is_(None) | (Desktop.assigned_user_id != user_id))
    return union_all(held_here, dedicated_here)


def _held_and_dedicated():
    """The user's desktops in the pool (see _mine) as DESKTOP_BRIEF rows with `held`, oldest assignment first."""
    both = _mine(bindparam("user_id"), bindparam("pool_id")).subquery()
    return select(*DESKTOP_BRIEF, both.c.held).join(both, both.c.id == Desktop.id).order_by(Desktop.assigned_at,
                                                                                              Desktop.name)


_HELD_AND_DEDICATED = _held_and_dedicated()


def lock_user(session: Session, user_id: str) -> None:
    """Lock the user's row (user_lock) until the transaction ends: their assignments are counted one at a time."""
    if is_postgres(session):
        session.connection().execute(_LOCK_USER, {"user_id": user_id})


def desktops_held(session: Session, user_id: str, pool_id: str) -> list[tuple[str, str, dt.datetime | None]]:
    """(id, name, lease_until) of the pool desktops the user holds, oldest assignment first."""
    stmt = (select(Desktop.id, Desktop.name, Desktop.lease_until)
            .where(Desktop.pool_id == pool_id, Desktop.assigned_user_id == user_id)
            .order_by(Desktop.assigned_at, Desktop.name))
    return [tuple(row) for row in session.execute(stmt)]


def pool_usage(session: Session, pool_id: str) -> tuple[int, int]:
    """(desktops in use, desktops in the pool)."""
    in_use, total = session.execute(
        select(func.count(Desktop.assigned_user_id), func.count(Desktop.id)).where(Desktop.pool_id == pool_id)).one()
    return int(in_use), int(total)


def _free(pool_id):
    """A pool's desktops that may be handed to a user now: nobody's, not busy, and not on a host in maintenance (its
    desktops cannot start there, and the host is being emptied; a desktop the user already holds there stays theirs,
    its start refused naming the maintenance, as oVirt keeps a VM's owner while the host is maintained)."""
    has_owner = exists().where(Assignment.desktop_id == Desktop.id)
    in_maintenance = exists().where(Host.id == Desktop.host_id, Host.status == HostStatus.MAINTENANCE)
    return select(Desktop.id).where(Desktop.pool_id == pool_id, Desktop.assigned_user_id.is_(None),
                                    Desktop.task_state.is_(None) | Desktop.task_state.in_(ASSIGNABLE_TASKS),
                                    ~has_owner, ~in_maintenance)


def _free_candidates(pool_id: str, start: str, limit: int):
    """SQLite: a few free desktops in pick order (see _locked_pick)."""
    return _free(pool_id).order_by(case((Desktop.power_state == PowerState.UP, 0), else_=1),
                                   case((Desktop.id >= start, 0), else_=1), Desktop.id).limit(limit)


def _locked_pick(pool_id, start, *, wait: bool):
    """Postgres: a free desktop, row-locked (SKIP LOCKED unless `wait`), as a scalar subquery: running ones first
    (the user gets a console at once), then any; within each, the first by id at or after `start` (a random id),
    else the first before it. Index walks of ix_desktops_free_pick, each evaluated only when the ones before it
    found nothing. A random start keeps concurrent picks apart and each walk short: a walk from a fixed point
    passes the entry of every desktop taken before it (a taken row leaves the partial index only at vacuum) and
    every row that concurrent picks hold locked."""
    def first(*conditions):
        return _free(pool_id).where(*conditions).order_by(Desktop.id).limit(1) \
            .with_for_update(skip_locked=not wait).scalar_subquery()

    running = Desktop.power_state == PowerState.UP
    return func.coalesce(first(running, Desktop.id >= start), first(running, Desktop.id < start),
                         first(Desktop.id >= start), first(Desktop.id < start))


def _claim_statement(desktop_filter):
    """Compare-and-swap one desktop to the user: returns the claimed desktop, or nothing if it was taken."""
    return update(Desktop).where(desktop_filter, Desktop.assigned_user_id.is_(None)) \
        .values(assigned_user_id=bindparam("claimant"), assigned_at=bindparam("claimed_at"),
                lease_until=bindparam("lease_end")) \
        .returning(*DESKTOP_BRIEF)


# Postgres, in one round trip: UPDATE ... WHERE id = (SELECT ... LIMIT 1 FOR UPDATE [SKIP LOCKED]) RETURNING
_CLAIM_PICKED = {wait: _claim_statement(Desktop.id == _locked_pick(bindparam("pick_pool"), bindparam("pick_start"),
                                                                    wait=wait))
                 for wait in (False, True)}
_CLAIM_ONE = _claim_statement(Desktop.id == bindparam("pick_desktop"))


def _claim(session: Session, statement, params: dict, user_id: str, now: dt.datetime,
           lease_until: dt.datetime | None) -> Any:
    return session.connection().execute(statement, {**params, "claimant": user_id, "claimed_at": now,
                                                    "lease_end": lease_until}).first()


# The pool asked for, by id or by name, and whether the user (or any of their nested groups) is entitled to it.
_POOL_KEYS = {"id": Pool.id, "name": Pool.name}


def _asked_pool(by: str, user_id):
    return select(*POOL_BRIEF, pool_entitlement(user_id, Pool.id).label("entitled")) \
        .where(_POOL_KEYS[by] == bindparam("pool"))


_ASKED_POOL = {by: _asked_pool(by, bindparam("user_id")) for by in _POOL_KEYS}
_DESKTOP_COLUMNS = tuple(f"desktop_{c.key}" for c in DESKTOP_BRIEF)


def _take_statement(by: str):
    """Postgres, one statement for a whole first look: the pool asked for with the user's entitlement, the user's
    desktops in it (_mine), and, when the rules allow one more (entitled; under max_desktops_per_user; asked for
    one more, or holding none), a free desktop claimed with SKIP LOCKED. One row per desktop of the user's
    (`how`: held | dedicated | new), or one row with `how` NULL; no row when there is no such pool.

    It must run after the user's lock is taken by an earlier statement of the transaction: a statement sees what
    was committed when it started, so only then does it see the desktop a concurrent connect of the same user
    has just claimed. The claim leaves lease_until to the caller (take_from_pool), which knows the pool's rules."""
    user_id = bindparam("user_id")
    asked = _asked_pool(by, user_id).cte("asked")
    pool_id = select(asked.c.id).scalar_subquery()
    mine = _mine(user_id, pool_id).cte("mine")
    held_count = select(func.count()).select_from(mine).where(mine.c.held).scalar_subquery()
    may_claim = and_(select(asked.c.entitled).scalar_subquery(),
                     held_count < select(asked.c.max_desktops_per_user).scalar_subquery(),
                     or_(bindparam("new_desktop"), ~exists(select(mine.c.id))))
    claimed = update(Desktop).where(Desktop.id == _locked_pick(pool_id, bindparam("pick_start"), wait=False),
                                    Desktop.assigned_user_id.is_(None), may_claim) \
        .values(assigned_user_id=user_id, assigned_at=bindparam("claimed_at"), lease_until=None) \
        .returning(Desktop.id).cte("claimed")
    taken = union_all(select(mine.c.id, case((mine.c.held, "held"), else_="dedicated").label("how")),
                      select(claimed.c.id, literal("new"))).subquery("taken")
    # Desktop columns as this statement's snapshot has them: the claim changes none of DESKTOP_BRIEF but the lease.
    return select(*asked.c, *[c.label(name) for c, name in zip(DESKTOP_BRIEF, _DESKTOP_COLUMNS)], taken.c.how) \
        .select_from(asked.outerjoin(taken, true()).outerjoin(Desktop, Desktop.id == taken.c.id)) \
        .order_by(Desktop.assigned_at, Desktop.name)


_TAKE = {by: _take_statement(by) for by in _POOL_KEYS}


# A desktop as the broker needs it (DESKTOP_BRIEF's columns), taken from a take row, which carries more.
_DesktopBrief = collections.namedtuple("_DesktopBrief", [c.key for c in DESKTOP_BRIEF])


def _desktop_of(row: Any) -> Any:
    return _DesktopBrief(*(getattr(row, name) for name in _DESKTOP_COLUMNS))


def _first_look(session: Session, user_id: str, by: str, key: str, *, new_desktop: bool, start: str,
                now: dt.datetime) -> tuple[Any, list[tuple[str, Any]]]:
    """(the pool row or None, [(how, desktop)] of the user's desktops there, a "new" one if it was claimed)."""
    params = {"user_id": user_id, "pool": key}
    if is_postgres(session):
        rows = session.connection().execute(_TAKE[by], {**params, "new_desktop": new_desktop, "pick_start": start,
                                                        "claimed_at": now}).all()
        return (rows[0] if rows else None), [(r.how, _desktop_of(r)) for r in rows if r.how is not None]
    pool = session.connection().execute(_ASKED_POOL[by], params).first()
    if pool is None or not pool.entitled:
        return pool, []
    rows = session.connection().execute(_HELD_AND_DEDICATED, {"user_id": user_id, "pool_id": pool.id}).all()
    return pool, [("held" if r.held else "dedicated", r) for r in rows]


def take_from_pool(session: Session, user_id: str, by: str, key: str, *, new_desktop: bool = False,
                   now: dt.datetime | None = None, user_locked: bool = False) -> tuple[Any, Assigned]:
    """The pool asked for (`by` "id" or "name") and a desktop of it for the user (see the module docstring for the
    order and the guarantees): (a POOL_BRIEF row, Assigned).

    `new_desktop=True` asks for one more desktop than the user holds. `user_locked` says the transaction already
    holds the user's lock (user_lock; on Postgres the connect route takes it as it authenticates). Raises NotFound
    when the pool is missing or neither the user nor any of their groups is entitled to it, PoolClosed outside a
    time-based pool's window, TooManyDesktops past max_desktops_per_user, PoolFull when no desktop is free. The
    caller commits; a raise must roll the transaction back (a first look on Postgres may already have claimed a
    desktop).
    """
    now = now or utcnow()
    if not user_locked:
        lock_user(session, user_id)
    start = new_id()  # where a pick starts among the pool's free desktops (see _locked_pick)
    pool, mine = _first_look(session, user_id, by, key, new_desktop=new_desktop, start=start, now=now)
    if pool is None or not pool.entitled:
        # A pool the user may not use does not exist for them, as in oVirt's filtered API: one answer for both, so
        # that a user cannot learn which pools exist by asking.
        raise NotFound(f"pool {key} does not exist or you are not entitled to it; ask an administrator for access")
    check_window(pool, now)
    lease_until = lease_end(pool, now)
    claimed = next((d for how, d in mine if how == "new"), None)
    if claimed is not None:
        if lease_until is not None:
            session.connection().execute(_SET_LEASE, {"desktop": claimed.id, "lease_end": lease_until})
        return pool, Assigned(claimed, "new", lease_until)
    held = [d for how, d in mine if how == "held"]
    if not new_desktop:
        own = next((d for how, d in mine if how == "dedicated"), None)
        if own is not None:
            return pool, Assigned(own, "dedicated")
        if held:
            return pool, Assigned(held[0], "existing", held[0].lease_until)
    if len(held) >= pool.max_desktops_per_user:
        raise TooManyDesktops(held=len(held), pool=pool.name, limit=pool.max_desktops_per_user)
    claimed = _claim_free(session, pool.id, user_id, now, lease_until, start, first_done=is_postgres(session))
    if claimed is None:
        in_use, size = pool_usage(session, pool.id)
        raise PoolFull(pool=pool.name, in_use=in_use, size=size)
    return pool, Assigned(claimed, "new", lease_until)


_SET_LEASE = update(Desktop).where(Desktop.id == bindparam("desktop")).values(lease_until=bindparam("lease_end")) \
    .execution_options(synchronize_session=False)


def _claim_free(session: Session, pool_id: str, user_id: str, now: dt.datetime, lease_until: dt.datetime | None,
                start: str, *, first_done: bool) -> Any:
    """Claim a free desktop of the pool for the user; None when there is none. SKIP LOCKED hands concurrent callers
    different rows, and the CAS is a second, backend-neutral guard. When every free row is locked by someone else,
    wait for those transactions (a blocking FOR UPDATE re-checks each row once its holder commits), so "pool full"
    is only said of a pool that really is. `first_done`: the first, skipping attempt was made already."""
    for attempt in range(1 if first_done else 0, 3):
        if is_postgres(session):
            # The waiting passes walk from the pool's first desktop, not from the random start: a blocking FOR
            # UPDATE keeps the lock of every row it waited for and then passed (taken meanwhile), so two waiters
            # walking from different points could each hold a row the other waits for (Postgres then kills one
            # with "deadlock detected": a 503 in a login storm). One order for every waiter makes a cycle
            # impossible; the skipping pass keeps the random start that spreads concurrent picks.
            claimed = _claim(session, _CLAIM_PICKED[attempt > 0],
                             {"pick_pool": pool_id, "pick_start": start if attempt == 0 else ""},
                             user_id, now, lease_until)
            if claimed is not None:
                return claimed
            continue
        for desktop_id in session.scalars(_free_candidates(pool_id, start, 5)):
            claimed = _claim(session, _CLAIM_ONE, {"pick_desktop": desktop_id}, user_id, now, lease_until)
            if claimed is not None:
                return claimed
    return None


def release(session: Session, desktop_id: str, *, user_id: str | None = None,
            next_task: TaskState | None = None, lease_ended_by: dt.datetime | None = None) -> bool:
    """Take a pool desktop back from its user (compare-and-swap: only if `user_id` still holds it, when
    given; only if its lease ended by `lease_ended_by`, when given, so a lease extended meanwhile is kept).
    `next_task` marks the work that must happen before anyone else gets it (reimaging, deleting). Returns False
    when the desktop was not held (by that user)."""
    stmt = update(Desktop).where(Desktop.id == desktop_id, Desktop.assigned_user_id.is_not(None))
    if user_id is not None:
        stmt = stmt.where(Desktop.assigned_user_id == user_id)
    if lease_ended_by is not None:
        stmt = stmt.where(Desktop.lease_until <= lease_ended_by)
    values: dict = {"assigned_user_id": None, "assigned_at": None, "lease_until": None}
    if next_task is not None:
        stmt = stmt.where(Desktop.task_state.is_(None) | Desktop.task_state.in_(ASSIGNABLE_TASKS))
        values["task_state"] = next_task
    return session.execute(stmt.values(**values).execution_options(synchronize_session=False)).rowcount == 1


def assign_to_user(session: Session, desktop_id: str, user_id: str, *, now: dt.datetime | None = None) -> bool:
    """An administrator hands a free pool desktop to a user (manual pools). CAS: False if it is taken."""
    now = now or utcnow()
    return session.execute(
        update(Desktop).where(Desktop.id == desktop_id, Desktop.assigned_user_id.is_(None))
        .values(assigned_user_id=user_id, assigned_at=now)
        .execution_options(synchronize_session=False)).rowcount == 1
