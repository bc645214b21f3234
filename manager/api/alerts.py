"""Alerts (GET /alerts, acknowledge, resolve) and each object's events (GET /<objects>/{id}/events).

Permissions, as oVirt has them: whoever may read events sees the alerts (HelpDesk included: it answers the phone
when a host is down); acknowledging and resolving change them, which takes `alerts:write` (SuperUser,
DesktopAdmin).
"""
from __future__ import annotations

import datetime as dt
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query
from pydantic import Field

from core.enums import Severity
from core.errors import NotFound
from event_manager.service import alerts, query_events
from manager.api import schemas as s
from manager.api.common import DbSession, Page, Paging, paginate
from manager.auth import Principal, require
from manager.models import Alert, Desktop, Event, Host, Job, Pool, Template, User

router = APIRouter()
EventsRead = Annotated[Principal, Depends(require("events:read"))]
AlertsWrite = Annotated[Principal, Depends(require("alerts:write"))]


class AlertOut(s.Out):
    id: str
    kind: str = Field(description="what is wrong: host.unavailable, desktop.start_failed, job.failed, "
                                  "storage.nearly_full, pool.nearly_full, directory.sync_failing")
    object_kind: str = Field(description="host, desktop, job, storage_domain, pool or directory")
    object_id: str
    object_name: str
    state: Literal["open", "acknowledged", "resolved"]
    severity: Severity
    message: str
    opened_at: dt.datetime
    updated_at: dt.datetime
    acknowledged_at: dt.datetime | None
    acknowledged_by: str
    resolved_at: dt.datetime | None
    resolved_by: str = Field(description="who resolved it; 'system' when the condition went away")


@router.get("/alerts", response_model=Page[AlertOut], tags=["alerts"])
def get_alerts(session: DbSession, paging: Paging, who: EventsRead,
               state: Literal["open", "acknowledged", "resolved"] | None = None,
               kind: Annotated[str | None, Query(max_length=64)] = None,
               object_id: Annotated[str | None, Query(max_length=255)] = None) -> dict[str, Any]:
    """Alerts, unresolved first then newest first; filtered by state, kind and object."""
    return paginate(session, alerts.list_alerts(state, kind, object_id), paging, AlertOut,
                    sortable={"opened_at": Alert.opened_at, "updated_at": Alert.updated_at, "kind": Alert.kind})


@router.post("/alerts/{alert_id}/acknowledge", response_model=AlertOut, tags=["alerts"])
def acknowledge_alert(alert_id: str, session: DbSession, who: AlertsWrite) -> Any:
    """Someone is on it: an open alert becomes acknowledged (409 unless it is open). It is resolved when the
    condition goes away."""
    return AlertOut.model_validate(alerts.acknowledge(session, alert_id, who.name))


@router.post("/alerts/{alert_id}/resolve", response_model=AlertOut, tags=["alerts"])
def resolve_alert(alert_id: str, session: DbSession, who: AlertsWrite) -> Any:
    """Resolve by hand (409 when resolved already). A condition that persists opens a new alert at the next check."""
    return AlertOut.model_validate(alerts.resolve(session, alert_id, who.name))


# ---- each object's events ------------------------------------------------------------------------------------------
OBJECTS = {"desktops": (Desktop, "desktop"), "hosts": (Host, "host"), "pools": (Pool, "pool"),
           "users": (User, "user"), "templates": (Template, "template"), "jobs": (Job, "job")}


def _object_events_route(path: str, model: type, kind: str) -> None:
    def object_events(item_id: str, session: DbSession, paging: Paging, who: EventsRead,
                      severity: Severity | None = None,
                      code: Annotated[str | None, Query(max_length=64, description="exact code, or a prefix "
                                                        "ending in '*' (host.fence*)")] = None,
                      since: dt.datetime | None = None, until: dt.datetime | None = None) -> dict[str, Any]:
        if session.get(model, item_id) is None:
            raise NotFound(kind=kind, id=item_id)
        filters = {f"{kind}_id": item_id, "severity": severity, "code": code}
        return paginate(session, query_events(filters, since=since, until=until), paging, s.EventOut,
                        sortable={"time": Event.time, "severity": Event.severity, "code": Event.code})

    object_events.__doc__ = (f"The events that name this {kind}, newest first; filters: severity (exact), code "
                             "(exact, or a prefix ending in '*', e.g. host.fence*), since and until (a time window "
                             "[since, until)).")
    router.add_api_route(f"/{path}/{{item_id}}/events", object_events, methods=["GET"],
                         response_model=Page[s.EventOut], tags=["events"], name=f"list_{kind}_events",
                         summary=f"List a {kind}'s events")


for _path, (_model, _kind) in OBJECTS.items():
    _object_events_route(_path, _model, _kind)
