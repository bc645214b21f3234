"""The event (audit) log: every state change, admin action and failure is one row.

`emit` adds the event to the caller's session, so it commits or rolls back with the change it describes.
"""
from __future__ import annotations

import logging
from typing import Any

from sqlalchemy import Select, select
from sqlalchemy.orm import Session

from core.enums import Severity
from manager.models import Event

log = logging.getLogger("vdi.events")


def emit(session: Session, code: str, message: str, *, severity: Severity = Severity.NORMAL, actor: str = "system",
         user_id: str | None = None, desktop_id: str | None = None, host_id: str | None = None,
         pool_id: str | None = None, template_id: str | None = None, job_id: str | None = None,
         correlation_id: str = "") -> Event:
    """Record an event in the caller's transaction and return it (flushed, so it has its id)."""
    event = Event(code=code, message=message, severity=severity, actor=actor, user_id=user_id,
                  desktop_id=desktop_id, host_id=host_id, pool_id=pool_id, template_id=template_id,
                  job_id=job_id, correlation_id=correlation_id)
    session.add(event)
    session.flush()
    level = {Severity.NORMAL: logging.INFO, Severity.WARNING: logging.WARNING}.get(severity, logging.ERROR)
    log.log(level, "%s: %s", code, message)
    return event


FILTERABLE = ("severity", "code", "user_id", "desktop_id", "host_id", "pool_id", "template_id", "job_id",
              "correlation_id")


def query_events(filters: dict[str, Any], *, after_id: int | None = None, since=None, until=None) -> Select:
    """Events newest first, filtered by exact match on FILTERABLE fields and a time window."""
    stmt = select(Event).where(Event.deleted.is_(False))
    for name in FILTERABLE:
        value = filters.get(name)
        if value not in (None, ""):
            stmt = stmt.where(getattr(Event, name) == value)
    if after_id is not None:
        stmt = stmt.where(Event.id > after_id)
    if since is not None:
        stmt = stmt.where(Event.time >= since)
    if until is not None:
        stmt = stmt.where(Event.time < until)
    return stmt.order_by(Event.id.desc())
