"""Handing pool desktops to users, safely under a login storm.

`assign_from_pool` returns, in this order: the user's dedicated desktop in the pool, the desktop the user
already holds in the pool, or the first free one. Guarantees, on Postgres:
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

import contextlib
import datetime as dt
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from sqlalchemy import bindparam, case, exists, func, literal, select, union_all, update
from sqlalchemy.orm import Session

from broker.errors import PoolClosed, TooManyDesktops
from core.enums import PoolType, PowerState, TaskState
from core.errors import PoolFull
from manager.db import is_postgres
from manager.models import Assignment, Desktop, Pool, User, utcnow

# Desktops in these task states can be handed out (a prestart in progress is fine: the broker waits for it).
ASSIGNABLE_TASKS = (TaskState.STARTING,)
_sqlite_lock = threading.Lock()


# What the broker needs of a desktop and of a pool. Assignment reads these columns, not ORM objects: the row of
# a SELECT or an UPDATE ... RETURNING answers attribute access like the ORM object does, at a fraction of the CPU.
DESKTOP_BRIEF = (Desktop.id, Desktop.name, Desktop.pool_id, Desktop.os_type, Desktop.console_protocols,
                 Desktop.power_state, Desktop.task_state, Desktop.ip, Desktop.host_id, Desktop.lease_until)
POOL_BRIEF = (Pool.id, Pool.name, Pool.pool_type, Pool.protocol_policy, Pool.window_start, Pool.window_end,
              Pool.lease_seconds, Pool.max_desktops_per_user)


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


def lease_end(pool: Pool, now: dt.datetime) -> dt.datetime | None:
    """When a time-based lease taken now ends: now + lease_seconds, cut at the window's end."""
    if pool.pool_type != PoolType.TIME_BASED:
        return None
    ends = []
    if pool.lease_seconds:
        ends.append(now + dt.timedelta(seconds=pool.lease_seconds))
    if pool.window_end is not None:
        ends.append(pool.window_end)
    return min(ends) if ends else None


def check_window(pool: Pool, now: dt.datetime) -> None:
    """Raises PoolClosed outside a time-based pool's window."""
    if pool.window_start is not None and now < pool.window_start:
        raise PoolClosed(pool=pool.name, reason=f"opens at {pool.window_start.isoformat()}; try again then")
    if pool.window_end is not None and now >= pool.window_end:
        raise PoolClosed(pool=pool.name, reason=f"closed at {pool.window_end.isoformat()}")


# The statements of a connect are built once, with bound parameters: building a SQLAlchemy statement costs more
# CPU than the database spends running it, and a login storm runs them hundreds of times a second.
def user_lock(user_id):
    """The user's row, locked FOR NO KEY UPDATE until the transaction ends (it does not block foreign-key checks):
    two connects of one user run one after the other. A statement of its own, or a scalar subquery that a caller's
    earlier query carries (then pass user_locked=True to assign_from_pool)."""
    return select(User.id).where(User.id == user_id).with_for_update(key_share=True)


_LOCK_USER = user_lock(bindparam("user_id"))


def _held_and_dedicated():
    """The desktops the user holds in the pool and their dedicated ones there, oldest assignment first. Two index
    lookups (UNION ALL) rather than one OR, which Postgres can only answer by scanning the pool."""
    user_id, pool_id = bindparam("user_id"), bindparam("pool_id")
    held_here = select(Desktop.id, literal(True).label("held")) \
        .where(Desktop.pool_id == pool_id, Desktop.assigned_user_id == user_id)
    dedicated_here = select(Desktop.id, literal(False)) \
        .join(Assignment, Assignment.desktop_id == Desktop.id) \
        .where(Assignment.user_id == user_id, Desktop.pool_id == pool_id,
               Desktop.assigned_user_id.is_(None) | (Desktop.assigned_user_id != user_id))
    both = union_all(held_here, dedicated_here).subquery()
    return select(*DESKTOP_BRIEF, both.c.held).join(both, both.c.id == Desktop.id).order_by(Desktop.assigned_at,
                                                                                              Desktop.name)


_HELD_AND_DEDICATED = _held_and_dedicated()


def _lock_user(session: Session, user_id: str) -> None:
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
    has_owner = exists().where(Assignment.desktop_id == Desktop.id)
    return select(Desktop.id).where(Desktop.pool_id == pool_id, Desktop.assigned_user_id.is_(None),
                                    Desktop.task_state.is_(None) | Desktop.task_state.in_(ASSIGNABLE_TASKS),
                                    ~has_owner)


def _free_candidates(pool_id: str, limit: int):
    """A few free desktops, running ones first (the user gets a console at once), then by name."""
    return _free(pool_id).order_by(case((Desktop.power_state == PowerState.UP, 0), else_=1), Desktop.name) \
        .limit(limit)


def _locked_pick(pool_id, *, wait: bool):
    """Postgres: the first free desktop, running ones first, row-locked (SKIP LOCKED unless `wait`), as a scalar
    subquery. Two index-ordered picks (ix_desktops_free_pick) instead of one sort of every free desktop of the
    pool: the second, over any power state, is only evaluated when no running desktop is free."""
    running = _free(pool_id).where(Desktop.power_state == PowerState.UP).order_by(Desktop.name).limit(1) \
        .with_for_update(skip_locked=not wait).scalar_subquery()
    any_state = _free(pool_id).order_by(Desktop.name).limit(1).with_for_update(skip_locked=not wait) \
        .scalar_subquery()
    return func.coalesce(running, any_state)


def _claim_statement(desktop_filter):
    """Compare-and-swap one desktop to the user: returns the claimed desktop, or nothing if it was taken."""
    return update(Desktop).where(desktop_filter, Desktop.assigned_user_id.is_(None)) \
        .values(assigned_user_id=bindparam("claimant"), assigned_at=bindparam("claimed_at"),
                lease_until=bindparam("lease_end")) \
        .returning(*DESKTOP_BRIEF)


# Postgres, in one round trip: UPDATE ... WHERE id = (SELECT ... LIMIT 1 FOR UPDATE [SKIP LOCKED]) RETURNING
_CLAIM_PICKED = {wait: _claim_statement(Desktop.id == _locked_pick(bindparam("pick_pool"), wait=wait))
                 for wait in (False, True)}
_CLAIM_ONE = _claim_statement(Desktop.id == bindparam("pick_desktop"))


def _claim(session: Session, statement, params: dict, user_id: str, now: dt.datetime,
           lease_until: dt.datetime | None) -> Any:
    return session.connection().execute(statement, {**params, "claimant": user_id, "claimed_at": now,
                                                    "lease_end": lease_until}).first()


def assign_from_pool(session: Session, user_id: str, pool: Any, *, new_desktop: bool = False,
                     now: dt.datetime | None = None, user_locked: bool = False) -> Assigned:
    """Give the user a desktop of `pool` (see the module docstring for the order and the guarantees).

    `new_desktop=True` asks for one more desktop than the user holds. `user_locked` says the transaction already
    holds the user's lock (see user_lock). Raises PoolClosed outside a
    time-based pool's window, TooManyDesktops past max_desktops_per_user, PoolFull when no desktop is
    free. Flushes; the caller commits.
    """
    now = now or utcnow()
    check_window(pool, now)
    if not user_locked:
        _lock_user(session, user_id)
    # A statement of its own, after the lock: it sees what a concurrent connect of the same user committed.
    rows = session.connection().execute(_HELD_AND_DEDICATED, {"user_id": user_id, "pool_id": pool.id}).all()
    held = [row for row in rows if row.held]
    if not new_desktop:
        own = next((row for row in rows if not row.held), None)
        if own is not None:
            return Assigned(own, "dedicated")
        if held:
            return Assigned(held[0], "existing", held[0].lease_until)
    if len(held) >= pool.max_desktops_per_user:
        raise TooManyDesktops(held=len(held), pool=pool.name, limit=pool.max_desktops_per_user)
    lease_until = lease_end(pool, now)
    # SKIP LOCKED hands concurrent callers different rows; the CAS below is a second, backend-neutral guard.
    # When every free row is locked by someone else, wait for those transactions (a blocking FOR UPDATE
    # re-checks each row once its holder commits) so "pool full" is only said of a pool that really is.
    for attempt in range(3):
        wait = attempt > 0
        if is_postgres(session):
            # One round trip: UPDATE ... WHERE id = (SELECT ... LIMIT 1 FOR UPDATE SKIP LOCKED) RETURNING
            claimed = _claim(session, _CLAIM_PICKED[wait], {"pick_pool": pool.id}, user_id, now, lease_until)
            if claimed is not None:
                return Assigned(claimed, "new", lease_until)
            continue
        for desktop_id in session.scalars(_free_candidates(pool.id, 5)):
            claimed = _claim(session, _CLAIM_ONE, {"pick_desktop": desktop_id}, user_id, now, lease_until)
            if claimed is not None:
                return Assigned(claimed, "new", lease_until)
    in_use, size = pool_usage(session, pool.id)
    raise PoolFull(pool=pool.name, in_use=in_use, size=size)


def release(session: Session, desktop_id: str, *, user_id: str | None = None,
            next_task: TaskState | None = None) -> bool:
    """Take a pool desktop back from its user (compare-and-swap: only if `user_id` still holds it, when
    given). `next_task` marks the work that must happen before anyone else gets it (reimaging,
    deleting). Returns False when the desktop was not held (by that user)."""
    stmt = update(Desktop).where(Desktop.id == desktop_id, Desktop.assigned_user_id.is_not(None))
    if user_id is not None:
        stmt = stmt.where(Desktop.assigned_user_id == user_id)
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
