"""Alerts: conditions the manager's own checks found, which someone must see to.

An alert is open, then acknowledged by a person, then resolved: by the manager when the condition goes away, or by a
person. At most one alert of a kind is unresolved per object (the partial unique index uq_alerts_unresolved); raising
it again refreshes its message. Opening one records an `alert.opened` event of severity ALERT, resolving one
`alert.resolved`.

Two sources raise and clear them:
- events: a catalog entry's `opens` / `clears` (a host's non_responsive, fenced or fence_failed opens
  host.unavailable on it, its recovery clears it; a desktop's failed start or reboot opens desktop.start_failed, its
  next start clears it; a failed job opens job.failed, which a later job of its kind on the same target that
  succeeds clears), applied by `on_event` as the event is emitted;
- `check_conditions`, run by the leader's "event-housekeeping" loop: storage domains above a threshold of use, pools
  with nearly every desktop in use, directories whose last sync failed.
"""
from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from sqlalchemy import func, select, text, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

from core.enums import Severity
from core.errors import Conflict, Invalid, NotFound
from core.ids import new_id
from event_manager import service as events
from event_manager.catalog import EventType
from manager.models import Alert, Desktop, DirectorySyncState, Job, Pool, StorageDomain, utcnow

OPEN, ACKNOWLEDGED, RESOLVED = "open", "acknowledged", "resolved"
STATES = (OPEN, ACKNOWLEDGED, RESOLVED)
EVENT_OBJECTS = ("user", "desktop", "host", "pool", "template", "job")  # alert objects with an events column

# What each kind means (docs/events.md lists them).
KINDS = {
    "host.unavailable": ("host", "a host stopped answering, was fenced or could not be fenced"),
    "desktop.start_failed": ("desktop", "a desktop failed to start, reboot or restart elsewhere"),
    "job.failed": ("job", "a job failed (resolved when a later job of its kind on the same target succeeds, or by "
                   "hand)"),
    "storage.nearly_full": ("storage_domain", "a storage domain is above the threshold of use "
                            "(VDI_ALERT_STORAGE_PERCENT, default 90)"),
    "pool.nearly_full": ("pool", "a pool has nearly every desktop in use (VDI_ALERT_POOL_PERCENT, default 90)"),
    "directory.sync_failing": ("directory", "the last sync of a directory (Active Directory) failed"),
}


def _event_ids(object_kind: str, object_id: str, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    ids = {k: v for k, v in (extra or {}).items() if k.removesuffix("_id") in EVENT_OBJECTS}
    if object_kind in EVENT_OBJECTS:
        ids[f"{object_kind}_id"] = object_id
    return ids


def raise_alert(session: Session, kind: str, object_kind: str, object_id: str, message: str, *, object_name: str = "",
                event_ids: dict[str, Any] | None = None) -> bool:
    """Open `kind` on the object unless it is open (or acknowledged) already, in which case its message is refreshed.
    Returns whether it opened now (then an alert.opened event is recorded in the same transaction)."""
    if kind not in KINDS:
        raise ValueError(f"alert kind {kind} is not declared in event_manager/alerts.py KINDS")
    now = utcnow()
    values = dict(id=new_id(), kind=kind, object_kind=object_kind, object_id=object_id,
                  object_name=object_name[:255], state=OPEN, severity=Severity.ALERT.value, message=message[:4000],
                  opened_at=now, updated_at=now, acknowledged_by="", resolved_by="")
    insert = pg_insert if session.get_bind().dialect.name == "postgresql" else sqlite_insert
    stmt = insert(Alert.__table__).values(values).on_conflict_do_nothing(
        index_elements=["kind", "object_id"], index_where=text(f"state != '{RESOLVED}'")).returning(
        Alert.__table__.c.id)
    opened = session.execute(stmt).first() is not None
    if not opened:
        session.execute(update(Alert).where(Alert.kind == kind, Alert.object_id == object_id, Alert.state != RESOLVED)
                        .values(message=message[:4000], updated_at=now).execution_options(synchronize_session=False))
        return False
    label = object_name or object_id
    events.emit(session, "alert.opened", f"alert {kind} opened on {object_kind} {label}: {message}",
                correlation_id=values["id"], **_event_ids(object_kind, object_id, event_ids))
    return True


def clear_alerts(session: Session, kinds: Iterable[str], object_id: str, *, actor: str = "system",
                 why: str = "the condition went away") -> int:
    """Resolve the unresolved alerts of `kinds` on the object; one alert.resolved event each. Returns how many."""
    rows = session.execute(
        update(Alert).where(Alert.kind.in_(list(kinds)), Alert.object_id == object_id, Alert.state != RESOLVED)
        .values(state=RESOLVED, resolved_at=utcnow(), resolved_by=actor, updated_at=utcnow())
        .returning(Alert.id, Alert.kind, Alert.object_kind, Alert.object_name)
        .execution_options(synchronize_session=False)).all()
    for alert_id, kind, object_kind, name in rows:
        events.emit(session, "alert.resolved", f"alert {kind} on {object_kind} {name or object_id} resolved: {why}",
                    actor=actor, correlation_id=alert_id, **_event_ids(object_kind, object_id))
    return len(rows)


def on_event(session: Session, etype: EventType, ids: dict[str, Any], message: str) -> None:
    """Apply an emitted event's `opens` / `clears` to the alerts of its first object (service.emit calls it)."""
    object_kind = etype.objects[0]
    object_id = ids.get(f"{object_kind}_id")
    if not object_id:
        return
    if etype.clears:
        clear_alerts(session, etype.clears, object_id, why=f"{etype.code}: {message}"[:1000])
    if etype.code == "job.succeeded":
        _clear_retried_jobs(session, object_id)
    if etype.opens:
        raise_alert(session, etype.opens, object_kind, object_id, message, event_ids=ids)


def _clear_retried_jobs(session: Session, job_id: str) -> None:
    """A job that succeeds resolves the job.failed alerts of earlier jobs of its kind on its target (a retry that
    worked); a job without a target clears nothing."""
    job = session.get(Job, job_id)
    if job is None or not job.target_id:
        return
    failed = select(Alert.object_id).join(Job, Job.id == Alert.object_id).where(
        Alert.kind == "job.failed", Alert.state != RESOLVED, Job.kind == job.kind,
        Job.target_kind == job.target_kind, Job.target_id == job.target_id)
    for earlier in session.scalars(failed).all():
        clear_alerts(session, ["job.failed"], earlier, why=f"job {job.kind} {job_id} on the same "
                     f"{job.target_kind} succeeded")


def _alert(session: Session, alert_id: str) -> Alert:
    alert = session.get(Alert, alert_id, with_for_update=True)
    if alert is None:
        raise NotFound(kind="alert", id=alert_id)
    return alert


def acknowledge(session: Session, alert_id: str, actor: str) -> Alert:
    """Someone is on it: an open alert becomes acknowledged (it stays unresolved until the condition goes away)."""
    alert = _alert(session, alert_id)
    if alert.state != OPEN:
        raise Conflict(f"alert {alert_id} is {alert.state}; only an open alert can be acknowledged")
    now = utcnow()
    alert.state, alert.acknowledged_at, alert.acknowledged_by, alert.updated_at = ACKNOWLEDGED, now, actor, now
    events.emit(session, "alert.acknowledged", f"{actor} acknowledged alert {alert.kind} on {alert.object_kind} "
                f"{alert.object_name or alert.object_id}", actor=actor, correlation_id=alert.id,
                **_event_ids(alert.object_kind, alert.object_id))
    return alert


def resolve(session: Session, alert_id: str, actor: str) -> Alert:
    """Resolve by hand (e.g. a failed job someone has dealt with). If the condition persists, the next check opens a
    new alert."""
    alert = _alert(session, alert_id)
    if alert.state == RESOLVED:
        raise Conflict(f"alert {alert_id} is resolved already")
    clear_alerts(session, [alert.kind], alert.object_id, actor=actor, why=f"resolved by {actor}")
    session.refresh(alert)
    return alert


def list_alerts(state: str | None = None, kind: str | None = None, object_id: str | None = None):
    """Unresolved first (open, then acknowledged), newest first."""
    if state is not None and state not in STATES:
        raise Invalid(f"state: one of {', '.join(STATES)}")
    stmt = select(Alert)
    if state:
        stmt = stmt.where(Alert.state == state)
    if kind:
        stmt = stmt.where(Alert.kind == kind)
    if object_id:
        stmt = stmt.where(Alert.object_id == object_id)
    return stmt.order_by(Alert.state == RESOLVED, Alert.opened_at.desc(), Alert.id)


# ---- the periodic checks -----------------------------------------------------------------------------------------
def _sync(session: Session, kind: str, object_kind: str, found: dict[str, tuple[str, str]], checked: Iterable[str]) \
        -> dict[str, int]:
    """Raise `kind` on every object in `found` ({id: (name, message)}); clear it on the other `checked` objects."""
    opened = sum(raise_alert(session, kind, object_kind, oid, msg, object_name=name) for oid, (name, msg)
                 in found.items())
    cleared = sum(clear_alerts(session, [kind], oid) for oid in checked if oid not in found)
    return {"opened": opened, "cleared": cleared}


def check_conditions(session: Session, *, storage_percent: float = 90.0, pool_percent: float = 90.0) \
        -> dict[str, dict[str, int]]:
    """Storage domains used at `storage_percent` or more, pools with `pool_percent` or more of their desktops in use,
    directories whose last sync failed: each raises its alert; one that recovered clears it."""
    domains = session.execute(select(StorageDomain.id, StorageDomain.name, StorageDomain.total_bytes,
                                     StorageDomain.used_bytes, StorageDomain.free_bytes)).all()
    full = {}
    for sid, name, total, used, free in domains:
        used = used or max(0, total - free)
        if total > 0 and used * 100 >= storage_percent * total:
            full[sid] = (name, f"storage domain {name} is {used * 100 / total:.0f}% used ({used >> 30} of "
                               f"{total >> 30} GiB; threshold {storage_percent:g}%)")
    report = {"storage": _sync(session, "storage.nearly_full", "storage_domain", full, [d[0] for d in domains])}

    in_use = func.count(Desktop.id).filter(Desktop.assigned_user_id.is_not(None))
    pools = session.execute(select(Pool.id, Pool.name, Pool.size, in_use)
                            .outerjoin(Desktop, Desktop.pool_id == Pool.id).group_by(Pool.id)).all()
    busy = {pid: (name, f"pool {name} has {used} of {size} desktops in use (threshold {pool_percent:g}%)")
            for pid, name, size, used in pools if size > 0 and used * 100 >= pool_percent * size}
    report["pools"] = _sync(session, "pool.nearly_full", "pool", busy, [p[0] for p in pools])

    dirs = session.execute(select(DirectorySyncState.directory, DirectorySyncState.last_error)).all()
    failing = {name: (name, f"the last sync of directory {name} failed: {error[:500]}") for name, error in dirs
               if error}
    report["directories"] = _sync(session, "directory.sync_failing", "directory", failing, [d[0] for d in dirs])
    return report
