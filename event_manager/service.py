"""The event (audit) log: every state change, admin action and failure is one row.

`emit` adds the event to the caller's transaction, so it commits or rolls back with the change it describes.
"""
from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable
from typing import Any

from sqlalchemy import Select, delete, event, insert, select
from sqlalchemy.orm import Session

from core.enums import Severity
from event_manager import alerts, catalog
from event_manager.notifications import Dispatcher, DispatcherThread, write_outbox
from manager import db
from manager.db import forget_on_rollback
from manager.models import Event, utcnow

log = logging.getLogger("vdi.events")


_PENDING = "vdi_pending_events"


def emit(session: Session, code: str, message: str, *, severity: Severity | None = None, actor: str = "system",
         user_id: str | None = None, desktop_id: str | None = None, host_id: str | None = None,
         pool_id: str | None = None, template_id: str | None = None, job_id: str | None = None,
         correlation_id: str = "") -> None:
    """Record an event in the caller's transaction: it commits or rolls back with the change it describes.

    The events of a transaction are written together, in one INSERT, when it next flushes or commits (a connect
    records three; writing them as ORM objects cost more than the rest of the request's database work).

    `code` must be declared in event_manager/catalog.py (UndeclaredEvent otherwise); `severity` defaults to the
    catalog's. A code with flood suppression records nothing when its object had one within the window; a code that
    opens or clears an alert does so here, in the same transaction (event_manager/alerts.py)."""
    etype = catalog.event_type(code)
    severity = severity or etype.severity
    ids = {"user_id": user_id, "desktop_id": desktop_id, "host_id": host_id, "pool_id": pool_id,
           "template_id": template_id, "job_id": job_id}
    if etype.suppress_s and _suppressed(session, etype, ids):
        return
    session.info.setdefault(_PENDING, []).append({
        "time": utcnow(), "code": code, "message": message, "severity": severity, "actor": actor,
        "user_id": user_id, "desktop_id": desktop_id, "host_id": host_id, "pool_id": pool_id,
        "template_id": template_id, "job_id": job_id, "correlation_id": correlation_id, "deleted": False})
    level = {Severity.NORMAL: logging.INFO, Severity.WARNING: logging.WARNING}.get(severity, logging.ERROR)
    log.log(level, "%s: %s", code, message)
    if etype.opens or etype.clears:  # after the event, so alert.opened / alert.resolved follow it
        alerts.on_event(session, etype, ids, message)


def _suppressed(session: Session, etype: catalog.EventType, ids: dict[str, Any]) -> bool:
    """Whether the event's first object recorded this code within `etype.suppress_s` (pending in this transaction
    or committed)."""
    column = f"{etype.objects[0]}_id"
    object_id = ids.get(column)
    if not object_id:
        return False
    since = utcnow() - dt.timedelta(seconds=etype.suppress_s)
    if any(e["code"] == etype.code and e[column] == object_id for e in session.info.get(_PENDING, ())):
        return True
    recent = select(Event.id).where(Event.code == etype.code, getattr(Event, column) == object_id,
                                    Event.time >= since).limit(1)
    return session.scalar(recent) is not None


# Inline: no RETURNING of the new ids (nobody reads them), so the INSERT also runs in a pipeline (db.commit_in_route).
_INSERT_EVENTS = insert(Event.__table__).inline()


_WRITTEN = "vdi_events_written"
_listeners: list[Callable[[list[str]], None]] = []


def on_commit(listener: Callable[[list[str]], None]) -> None:
    """Call `listener(codes)` with the codes of the events each transaction committed (the manager's metrics)."""
    if listener not in _listeners:
        _listeners.append(listener)


def _write_pending(session: Session, *_args: Any) -> None:
    pending = session.info.pop(_PENDING, None)
    if pending:
        connection = session.connection()
        connection.execute(_INSERT_EVENTS, pending)
        write_outbox(connection, pending)  # notifications commit or roll back with their events
        if _listeners:
            session.info.setdefault(_WRITTEN, []).extend(e["code"] for e in pending)


def _tell_listeners(session: Session) -> None:
    codes = session.info.pop(_WRITTEN, None)
    if codes:
        for listener in _listeners:
            listener(codes)


# Before every flush (so a query later in the transaction sees them) and before the commit (a transaction with no
# ORM changes does not flush). A rollback forgets them.
event.listen(Session, "before_flush", _write_pending)
event.listen(Session, "before_commit", _write_pending)
forget_on_rollback(_PENDING)
event.listen(Session, "after_commit", _tell_listeners)
forget_on_rollback(_WRITTEN)


def start_notifications(settings) -> DispatcherThread:
    """The notification dispatcher of this manager process (stop() it at shutdown)."""
    return DispatcherThread(Dispatcher(gather_s=settings.notify_gather_seconds, lease_s=settings.notify_lease_seconds),
                            settings.notify_poll_seconds).start()


FILTERABLE = ("severity", "code", "user_id", "desktop_id", "host_id", "pool_id", "template_id", "job_id",
              "correlation_id")


def query_events(filters: dict[str, Any], *, after_id: int | None = None, since=None, until=None) -> Select:
    """Events newest first, filtered by exact match on FILTERABLE fields (`code` also by a prefix ending in '*')
    and a time window."""
    stmt = select(Event).where(Event.deleted.is_(False))
    for name in FILTERABLE:
        value = filters.get(name)
        if name == "code" and isinstance(value, str) and value.endswith("*"):  # a prefix: host.fence*
            stmt = stmt.where(Event.code.startswith(value[:-1], autoescape=True))
        elif value not in (None, ""):
            stmt = stmt.where(getattr(Event, name) == value)
    if after_id is not None:
        stmt = stmt.where(Event.id > after_id)
    if since is not None:
        stmt = stmt.where(Event.time >= since)
    if until is not None:
        stmt = stmt.where(Event.time < until)
    return stmt.order_by(Event.id.desc())


def purge_events(session: Session, retention_days: float, *, batch: int = 10_000) -> int:
    """Delete up to `batch` events older than `retention_days` (oldest first); returns how many."""
    cutoff = utcnow() - dt.timedelta(days=retention_days)
    old = select(Event.id).where(Event.time < cutoff).order_by(Event.id).limit(batch).scalar_subquery()
    return session.execute(delete(Event).where(Event.id.in_(old)).execution_options(synchronize_session=False)) \
        .rowcount or 0


def housekeeping(*, retention_days: float, storage_percent: float, pool_percent: float,
                 batch: int = 10_000) -> dict[str, Any]:
    """One round of the leader's "event-housekeeping" loop (manager/app.py): the alert checks
    (alerts.check_conditions), then events older than the retention purged, `batch` rows per transaction."""
    with db.session_scope() as session:
        report: dict[str, Any] = alerts.check_conditions(session, storage_percent=storage_percent,
                                                         pool_percent=pool_percent)
    purged = 0
    while True:
        with db.session_scope() as session:
            deleted = purge_events(session, retention_days, batch=batch)
        purged += deleted
        if deleted < batch:
            break
    report["purged"] = purged
    return report
