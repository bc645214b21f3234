"""A host's maintenance mode: taken out of service for repair or upgrade, and back.

A host in maintenance gets no new desktops (placement picks only hosts that are up), its desktops cannot be
started (the node calls refuse a host in maintenance) and its heartbeats keep it in maintenance until an
administrator activates it. Entering maintenance while desktops run there is refused, naming them, unless the
caller asks to drain the host: then a job (manager.provisioning.migration.drain_host) moves them away live. The API routes (POST /hosts/{id}/maintenance and /activate) and the web console's
buttons go through these two functions.
"""
from __future__ import annotations

import datetime as dt

from sqlalchemy import select
from sqlalchemy.orm import Session

from core.enums import HostStatus, PowerState
from core.errors import Conflict, NotFound
from event_manager.service import emit
from manager.models import Desktop, Host, utcnow

# A desktop whose power state is one of these is not running: the host can go into maintenance under it.
NOT_RUNNING = (PowerState.DOWN, PowerState.SUSPENDED)
SHOWN = 10  # desktop names a refusal lists


def _locked_host(session: Session, host_id: str) -> Host:
    """The host's row, locked until the transaction ends: two status changes of one host run one after the other,
    and a heartbeat's status change waits for ours."""
    host = session.scalar(select(Host).where(Host.id == host_id).with_for_update()
                          .execution_options(populate_existing=True))
    if host is None:
        raise NotFound(kind="host", id=host_id)
    return host


def running_desktops(session: Session, host_id: str) -> list[str]:
    """Names of the desktops that run on the host or are in the middle of an action there (a start, a
    migration…), by name."""
    return list(session.scalars(select(Desktop.name).where(
        Desktop.host_id == host_id,
        (Desktop.power_state.not_in(NOT_RUNNING)) | Desktop.task_state.is_not(None)).order_by(Desktop.name)))


def enter_maintenance(session: Session, host_id: str, *, actor: str, reason: str = "", drain: bool = False) -> Host:
    """Put the host into maintenance. Conflict when it already is, or when desktops run on it (naming them:
    shut them down first) unless `drain` (the caller then enqueues the drain job). Flushes; the caller commits."""
    host = _locked_host(session, host_id)
    if host.status == HostStatus.MAINTENANCE:
        raise Conflict(f"host {host.name} is already in maintenance")
    running = running_desktops(session, host.id)
    if running and not drain:
        shown = ", ".join(running[:SHOWN]) + (f" and {len(running) - SHOWN} more" if len(running) > SHOWN else "")
        raise Conflict(f"{len(running)} desktop{'s' if len(running) != 1 else ''} run{'' if len(running) != 1 else 's'}"
                       f" on {host.name} ({shown}): shut them down first")
    previous = host.status
    host.status = HostStatus.MAINTENANCE
    session.flush()
    emit(session, "host.maintenance", f"{actor} put host {host.name} into maintenance (it was {previous.value})"
         + (f": {reason}" if reason else ""), actor=actor, host_id=host.id)
    return host


def activate(session: Session, host_id: str, *, actor: str, dead_after_seconds: float,
             now: dt.datetime | None = None) -> Host:
    """Take the host out of maintenance: up if its node agent sent a heartbeat within `dead_after_seconds`,
    otherwise non-responsive until the next heartbeat brings it up. Conflict when it is not in maintenance.
    Flushes; the caller commits."""
    host = _locked_host(session, host_id)
    if host.status != HostStatus.MAINTENANCE:
        raise Conflict(f"host {host.name} is {host.status.value}, not in maintenance")
    now = now or utcnow()
    alive = host.last_heartbeat_at is not None and \
        host.last_heartbeat_at >= now - dt.timedelta(seconds=dead_after_seconds)
    host.status = HostStatus.UP if alive else HostStatus.NON_RESPONSIVE
    session.flush()
    emit(session, "host.activated", f"{actor} activated host {host.name}: it is {host.status.value}"
         + ("" if alive else " until its node agent sends a heartbeat"), actor=actor, host_id=host.id)
    return host
