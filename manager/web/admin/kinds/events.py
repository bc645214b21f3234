"""The event page: what happened, who did it, the objects it names (as links), and in its Events tab the other
events of the same operation (its correlation id)."""
from __future__ import annotations

from sqlalchemy.orm import Session

from core.errors import NotFound
from manager.auth import Principal
from manager.db import get_or_404
from manager.models import Event
from manager.web.admin.objects import Fact, ObjectKind, object_fact, search_href

# The objects an event may name: (its column, the label, the object's noun)
NAMED = (("user_id", "User", "user"), ("desktop_id", "Desktop", "desktop"), ("host_id", "Host", "host"),
         ("pool_id", "Pool", "pool"), ("template_id", "Template", "template"), ("job_id", "Job", "job"))


def load(session: Session, event_id: str, who: Principal) -> Event:
    """GET /api/v1/events/{id}'s event (its ids are numbers: anything else names no event)."""
    if not event_id.isdigit() or len(event_id) > 18:
        raise NotFound(kind="event", id=event_id)
    return get_or_404(session, Event, int(event_id), "event")


def facts(session: Session, e: Event, who: Principal) -> list[Fact]:
    out = [Fact("Time", e.time, "when"), Fact("Severity", e.severity, "state"), Fact("Code", e.code, "code"),
           Fact("Message", e.message, "multiline", optional=True), Fact("By", e.actor)]
    out += [object_fact(session, who, label, noun, getattr(e, column)) for column, label, noun in NAMED
            if getattr(e, column) is not None]
    out += [Fact("Correlation id", e.correlation_id, "code", optional=True), Fact("ID", e.id, "code")]
    return out


KIND = ObjectKind("events", "event", "events:read", load, lambda e: f"Event {e.id}: {e.code}", facts,
                  event_filter=lambda e: {"correlation_id": e.correlation_id} if e.correlation_id else None,
                  plural="Events", list_href=search_href("Events: sortby time desc"))
