"""What happens to pool desktops over time, by pool kind. Database decisions only: the manager carries out
the node and disk work (reset, deprovision, prestart) as jobs after the transaction commits.

- automatic: a desktop is the user's for one session; at logoff it goes back to the pool and is reset to
  the template (task_state REIMAGING until the reset job finishes, so nobody gets a dirty desktop).
- manual: the first connect assigns the desktop for good; only an administrator unassigns it (and then it
  is reset before anyone else gets it).
- time_based: a lease until now + lease_seconds (or the window's end); at expiry the desktop is reclaimed
  by the pool's policy (reimage or deprovision), and one event tells the user and the administrators.

Any kind: a desktop whose user's console client left (a DISCONNECTED session) and stayed away the pool's
disconnect_after_minutes gets the pool's disconnect_action: logoff (as the user's own logoff) or reset (the user
loses the desktop, which is reset to its template).
"""
from __future__ import annotations

import datetime as dt
import enum
import logging
from dataclasses import dataclass

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from broker import assignment, sessions
from core.enums import DisconnectAction, PoolType, PowerState, ReclaimPolicy, SessionState, Severity, TaskState
from core.errors import Conflict, VdiError
from event_manager.service import emit
import image_manager.service as image_service
from manager.models import Assignment, Desktop, DesktopSession, Pool, User, utcnow

log = logging.getLogger(__name__)


class AfterLogoff(str, enum.Enum):
    RESET = "reset"  # released to the pool; the caller enqueues the reset job
    KEEP = "keep"  # stays the user's


@dataclass(frozen=True)
class Reclaimed:
    desktop_id: str
    desktop_name: str
    user_id: str
    pool_id: str
    policy: ReclaimPolicy


def _user_label(session: Session, user_id: str | None) -> str:
    if user_id is None:
        return "nobody"
    row = session.execute(select(User.username, User.domain).where(User.id == user_id)).first()
    return f"{row[0]}@{row[1]}" if row else user_id


def logoff(session: Session, desktop: Desktop, user_id: str, *, actor: str,
           now: dt.datetime | None = None) -> AfterLogoff:
    """End the user's sessions on the desktop and apply the pool kind's rule. Emits one event."""
    now = now or utcnow()
    sessions.end_sessions_of_desktop(session, desktop.id, now)
    pool = session.get(Pool, desktop.pool_id) if desktop.pool_id else None
    outcome = AfterLogoff.KEEP
    if pool is not None and pool.pool_type == PoolType.AUTOMATIC:
        if assignment.release(session, desktop.id, user_id=user_id, next_task=TaskState.REIMAGING):
            outcome = AfterLogoff.RESET
    what = "returned to pool and will be reset" if outcome == AfterLogoff.RESET else "stays assigned"
    if outcome == AfterLogoff.KEEP and apply_pending_version(session, desktop, actor=actor):
        what += " and is re-imaged onto its new template version (rolling update)"
    emit(session, "broker.logoff", f"{actor} logged off desktop {desktop.name}; the desktop {what}",
         actor=actor, user_id=user_id, desktop_id=desktop.id, pool_id=desktop.pool_id)
    return outcome


def apply_pending_version(session: Session, desktop: Desktop, *, actor: str) -> bool:
    """Once the user's sessions have ended: a desktop that kept its user (manual pool, a lease, a dedicated
    desktop) and waits for a new template version (a rolling update that found it in use) is re-imaged onto it
    now, by the image manager's job (sent at the commit). A desktop that goes back to its pool gets the version
    from its reset instead. False when nothing was started (no pending version, still in use, busy, or the
    version cannot be used: it stays pending, and the reason is logged)."""
    if desktop.pending_template_version_id is None:
        return False
    try:
        return image_service.apply_pending_version(session, desktop, actor=actor) is not None
    except VdiError as exc:
        log.warning("desktop %s keeps its pending template version: %s", desktop.name, exc.message)
        return False


def unassign(session: Session, desktop: Desktop, *, actor: str, now: dt.datetime | None = None) -> str | None:
    """An administrator takes a pool desktop from its user. The desktop is reset before anyone else gets it.
    Returns the former user's id, or None if it was free."""
    former = desktop.assigned_user_id
    if former is None:
        return None
    if not assignment.release(session, desktop.id, user_id=former, next_task=TaskState.REIMAGING):
        return None
    sessions.end_sessions_of_desktop(session, desktop.id, now)
    emit(session, "broker.unassigned", f"{actor} took desktop {desktop.name} from {_user_label(session, former)}; "
         "it will be reset to its template", actor=actor, user_id=former, desktop_id=desktop.id,
         pool_id=desktop.pool_id)
    return former


def release_user_desktops(session: Session, user_id: str, *, why: str, actor: str, pool_id: str | None = None,
                          now: dt.datetime | None = None) -> list[Reclaimed]:
    """Take back every pool desktop the user holds (of `pool_id` only, when given) because their access was
    revoked (`why`: the account was disabled or removed, or the entitlement went). Their sessions on it end; an
    automatic pool's desktop is reset as at logoff, a manual or time-based pool's follows the pool's
    reclaim_policy (reimage: reset to its template; deprovision: deleted), as an expired lease does. One WARNING
    event per desktop. A desktop busy with another action is skipped (the admins see it still held). The caller
    enqueues the returned reclaims' jobs."""
    now = now or utcnow()
    stmt = (select(Desktop.id, Desktop.name, Desktop.pool_id, Pool.pool_type, Pool.reclaim_policy, Pool.name)
            .join(Pool, Pool.id == Desktop.pool_id).where(Desktop.assigned_user_id == user_id)
            .order_by(Desktop.name))
    if pool_id is not None:
        stmt = stmt.where(Desktop.pool_id == pool_id)
    out: list[Reclaimed] = []
    for desktop_id, name, desktop_pool, pool_type, policy, pool_name in session.execute(stmt).all():
        policy = ReclaimPolicy.REIMAGE if pool_type == PoolType.AUTOMATIC else policy
        next_task = TaskState.REIMAGING if policy == ReclaimPolicy.REIMAGE else TaskState.DELETING
        if not assignment.release(session, desktop_id, user_id=user_id, next_task=next_task):
            continue
        sessions.end_sessions_of_desktop(session, desktop_id, now)
        verb = "reset to its template" if policy == ReclaimPolicy.REIMAGE else "deleted"
        emit(session, "broker.access_revoked", f"{_user_label(session, user_id)} lost desktop {name} (pool "
             f"{pool_name}): {why}; the desktop will be {verb}", severity=Severity.WARNING, actor=actor,
             user_id=user_id, desktop_id=desktop_id, pool_id=desktop_pool)
        out.append(Reclaimed(desktop_id, name, user_id, desktop_pool, policy))
    return out


def expire_leases(session: Session, now: dt.datetime | None = None, limit: int = 500) -> list[Reclaimed]:
    """Reclaim every time-based desktop whose lease has ended: the user loses it (sessions end), the desktop
    is marked for its pool's policy, and one WARNING event names the user (shown to them) for the admins."""
    now = now or utcnow()
    rows = session.execute(
        select(Desktop.id, Desktop.name, Desktop.assigned_user_id, Desktop.pool_id, Pool.reclaim_policy, Pool.name)
        .join(Pool, Pool.id == Desktop.pool_id)
        .where(Pool.pool_type == PoolType.TIME_BASED, Desktop.assigned_user_id.is_not(None),
               Desktop.lease_until.is_not(None), Desktop.lease_until <= now)
        .order_by(Desktop.lease_until).limit(limit)).all()
    out: list[Reclaimed] = []
    for desktop_id, name, user_id, pool_id, policy, pool_name in rows:
        next_task = TaskState.REIMAGING if policy == ReclaimPolicy.REIMAGE else TaskState.DELETING
        if not assignment.release(session, desktop_id, user_id=user_id, next_task=next_task, lease_ended_by=now):
            continue  # released (logoff, admin) or extended meanwhile: nothing to reclaim
        sessions.end_sessions_of_desktop(session, desktop_id, now)
        verb = "reset to its template" if policy == ReclaimPolicy.REIMAGE else "deleted"
        emit(session, "desktop.lease_expired",
             f"the lease of {_user_label(session, user_id)} on desktop {name} (pool {pool_name}) expired; "
             f"the desktop was reclaimed and will be {verb}", severity=Severity.WARNING, actor="system",
             user_id=user_id, desktop_id=desktop_id, pool_id=pool_id)
        out.append(Reclaimed(desktop_id, name, user_id, pool_id, policy))
    return out


def apply_schedules(session: Session, now: dt.datetime | None = None) -> list[tuple[str, bool]]:
    """Open and close the time-based pools that have recurring opening hours, as their schedule says at `now`.
    Closing is what the end of a pool's absolute window does: every lease still running past now is cut to now,
    so expire_leases (the next step of the same maintenance pass) reclaims those desktops by the pool's reclaim
    policy; connects are refused until it opens (check_window). Each change is a compare-and-swap on the state
    the pass read (another manager's pass, or a concurrent one, does it once) with one event. Returns (pool id,
    open now) of the pools that changed."""
    now = now or utcnow()
    changed: list[tuple[str, bool]] = []
    for pool in session.scalars(select(Pool).where(Pool.pool_type == PoolType.TIME_BASED).order_by(Pool.name)):
        if not pool.schedule:
            if pool.schedule_open is not None:  # its opening hours were removed: nothing to say any more
                pool.schedule_open = None
            continue
        is_open = assignment.closed_reason(pool, now) is None
        if pool.schedule_open is is_open:
            continue
        if not session.execute(update(Pool).where(Pool.id == pool.id,
                                                  Pool.schedule_open.is_not_distinct_from(pool.schedule_open))
                               .values(schedule_open=is_open).execution_options(synchronize_session=False)).rowcount:
            continue
        if is_open:
            close = assignment.closes_at(pool, now)
            emit(session, "pool.opened", f"pool {pool.name} opened on its schedule"
                 + (f" until {close.isoformat()}" if close else ""), actor="system", pool_id=pool.id)
        else:
            cut = session.execute(update(Desktop).where(
                Desktop.pool_id == pool.id, Desktop.assigned_user_id.is_not(None),
                Desktop.lease_until.is_(None) | (Desktop.lease_until > now))
                .values(lease_until=now).execution_options(synchronize_session=False)).rowcount
            emit(session, "pool.closed", f"pool {pool.name} closed on its schedule; {cut} running lease(s) end now "
                 "and their desktops are reclaimed", actor="system", pool_id=pool.id)
        session.expire(pool)
        changed.append((pool.id, is_open))
    return changed


def act_on_disconnected(session: Session, now: dt.datetime | None = None, limit: int = 500) -> list[str]:
    """Apply each pool's disconnect policy to its desktops whose session has been disconnected for the pool's
    disconnect_after_minutes. Each session is ended by a compare-and-swap on the disconnection it read (a client
    that attached again meanwhile, or another manager process, wins). Returns the ids of the desktops to reset
    (marked REIMAGING; the caller enqueues the reset jobs after the commit)."""
    now = now or utcnow()
    rows = session.execute(
        select(DesktopSession.id, DesktopSession.user_id, DesktopSession.disconnected_at, Desktop, Pool)
        .join(Desktop, Desktop.id == DesktopSession.desktop_id).join(Pool, Pool.id == Desktop.pool_id)
        .where(DesktopSession.state == SessionState.DISCONNECTED, DesktopSession.disconnected_at.is_not(None),
               Pool.disconnect_action != DisconnectAction.NONE)
        .order_by(DesktopSession.disconnected_at).limit(limit)).all()
    to_reset: list[str] = []
    for session_id, user_id, since, desktop, pool in rows:
        if since > now - dt.timedelta(minutes=pool.disconnect_after_minutes):
            continue
        if not session.execute(update(DesktopSession).where(
                DesktopSession.id == session_id, DesktopSession.state == SessionState.DISCONNECTED,
                DesktopSession.disconnected_at == since).values(state=SessionState.ENDED, ended_at=now)
                .execution_options(synchronize_session=False)).rowcount:
            continue
        away = f"disconnected for {pool.disconnect_after_minutes} min" if pool.disconnect_after_minutes \
            else "disconnected"
        actor = f"pool {pool.name} ({away})"
        if pool.disconnect_action == DisconnectAction.LOGOFF:
            if logoff(session, desktop, user_id, actor=actor, now=now) == AfterLogoff.RESET:
                to_reset.append(desktop.id)
            continue
        sessions.end_sessions_of_desktop(session, desktop.id, now)
        if assignment.release(session, desktop.id, user_id=user_id, next_task=TaskState.REIMAGING):
            to_reset.append(desktop.id)
            what = "taken back and will be reset to its template"
        else:
            what = "left as it is (not the user's any more, or busy)"
        emit(session, "broker.disconnect_reset", f"{_user_label(session, user_id)} stayed {away} from desktop "
             f"{desktop.name}; pool {pool.name} ended the session and the desktop was {what}", actor=actor,
             user_id=user_id, desktop_id=desktop.id, pool_id=pool.id)
    return to_reset


def lease_limit(pool: Pool, desktop: Desktop, now: dt.datetime) -> dt.datetime | None:
    """The latest a time-based lease on `desktop` may be extended to: when it was taken + the pool's
    max_lease_seconds, cut at the pool's next closing (its window's end or the end of its current opening hours).
    None when the pool's leases cannot be extended."""
    if pool.pool_type != PoolType.TIME_BASED or pool.max_lease_seconds is None or desktop.assigned_at is None:
        return None
    ends = [desktop.assigned_at + dt.timedelta(seconds=pool.max_lease_seconds)]
    close = assignment.closes_at(pool, now)
    if close is not None:
        ends.append(close)
    return min(ends)


def extend_lease(session: Session, desktop: Desktop, user_id: str, *, actor: str,
                 now: dt.datetime | None = None) -> dt.datetime:
    """Extend the user's lease on a time-based pool desktop by one lease (the pool's lease_seconds; to the limit
    when the pool has only a window), never beyond lease_limit. Compare-and-swap on the lease it read, so an
    expiry or another extension in between wins and this one is refused. Emits desktop.lease_extended. Returns the
    new end. Conflict when the desktop is not leased to the user, the pool allows no extension, the lease has
    ended or is already at the limit."""
    now = now or utcnow()
    pool = session.get(Pool, desktop.pool_id) if desktop.pool_id else None
    if pool is None or pool.pool_type != PoolType.TIME_BASED or desktop.assigned_user_id != user_id \
            or desktop.lease_until is None:
        raise Conflict(f"desktop {desktop.name} has no lease of yours to extend (only time-based pools lease)")
    limit = lease_limit(pool, desktop, now)
    if limit is None:
        raise Conflict(f"pool {pool.name} does not allow extending a lease")
    current = desktop.lease_until
    if current <= now:
        raise Conflict(f"your lease on desktop {desktop.name} has ended")
    wanted = current + dt.timedelta(seconds=pool.lease_seconds) if pool.lease_seconds else limit
    new_end = min(wanted, limit)
    if new_end <= current:
        raise Conflict(f"your lease on desktop {desktop.name} already runs to the pool's limit "
                       f"({limit.isoformat()})")
    done = session.execute(update(Desktop).where(Desktop.id == desktop.id, Desktop.assigned_user_id == user_id,
                                                 Desktop.lease_until == current)
                           .values(lease_until=new_end).execution_options(synchronize_session=False)).rowcount
    if done != 1:
        raise Conflict(f"the lease on desktop {desktop.name} changed meanwhile; reload and try again")
    emit(session, "desktop.lease_extended", f"{actor} extended the lease on desktop {desktop.name} (pool "
         f"{pool.name}) to {new_end.isoformat()}", actor=actor, user_id=user_id, desktop_id=desktop.id,
         pool_id=pool.id)
    return new_end


def desktops_to_prestart(session: Session, pool: Pool, now: dt.datetime | None = None) -> list[str]:
    """Free desktops to start so that `pool.prestarted` free ones are running or starting (none while a
    time-based pool is closed: nobody can take them)."""
    if pool.prestarted <= 0 or assignment.closed_reason(pool, now or utcnow()) is not None:
        return []
    free = (Desktop.pool_id == pool.id, Desktop.assigned_user_id.is_(None),
            ~select(Assignment.desktop_id).where(Assignment.desktop_id == Desktop.id).exists())
    ready = session.scalar(select(func.count()).select_from(Desktop).where(
        *free, (Desktop.power_state == PowerState.UP) | (Desktop.task_state == TaskState.STARTING))) or 0
    missing = pool.prestarted - ready
    if missing <= 0:
        return []
    return list(session.scalars(select(Desktop.id).where(
        *free, Desktop.power_state == PowerState.DOWN, Desktop.task_state.is_(None))
        .order_by(Desktop.name).limit(missing)))


def _held():
    return Desktop.assigned_user_id.is_not(None) | select(Assignment.desktop_id).where(
        Assignment.desktop_id == Desktop.id).exists()


def desktops_held_in_pool(session: Session, pool_id: str) -> int:
    """How many of the pool's desktops a user holds or is dedicated: a resize never removes those."""
    return session.scalar(select(func.count()).select_from(Desktop).where(
        Desktop.pool_id == pool_id, Desktop.task_state.is_distinct_from(TaskState.DELETING), _held())) or 0


@dataclass(frozen=True)
class ResizePlan:
    add: int
    remove: list[str]  # desktop ids, all free
    kept_busy: int  # desktops that would have to go but are in use: never touched


def plan_resize(session: Session, pool: Pool, new_size: int) -> ResizePlan:
    """Grow by `add` new desktops, or shrink by removing free desktops only (assigned, dedicated or busy ones are
    never touched; `kept_busy` says how many stay above the new size for that reason)."""
    current = session.scalar(select(func.count()).select_from(Desktop).where(
        Desktop.pool_id == pool.id, Desktop.task_state.is_distinct_from(TaskState.DELETING))) or 0
    if new_size >= current:
        return ResizePlan(new_size - current, [], 0)
    excess = current - new_size
    removable = list(session.scalars(
        select(Desktop.id).where(Desktop.pool_id == pool.id, Desktop.assigned_user_id.is_(None),
                                 Desktop.task_state.is_(None),
                                 ~select(Assignment.desktop_id).where(Assignment.desktop_id == Desktop.id).exists(),
                                 ~select(DesktopSession.id).where(DesktopSession.desktop_id == Desktop.id,
                                                                  DesktopSession.state.in_(sessions.LIVE)).exists())
        # stopped ones first, then the highest numbers, so the pool keeps its low names
        .order_by((Desktop.power_state == PowerState.UP).asc(), Desktop.name.desc()).limit(excess)))
    return ResizePlan(0, removable, excess - len(removable))
