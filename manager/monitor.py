"""Host liveness: a host whose heartbeats stopped is marked non-responsive, once, with one event.

The update is a compare-and-swap (only hosts still marked up change), so several manager processes can run
the loop at once without double events. Recovery is recorded by the heartbeat ingest (host.up).
"""
from __future__ import annotations

import datetime as dt
import logging
import threading

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from core.enums import HostStatus, Severity
from event_manager.service import emit
from manager import db
from manager.models import Host, utcnow

log = logging.getLogger(__name__)


def mark_silent_hosts(session: Session, dead_after_seconds: float, now: dt.datetime | None = None) -> list[str]:
    """Mark hosts without a heartbeat for `dead_after_seconds` non-responsive; returns their names."""
    now = now or utcnow()
    cutoff = now - dt.timedelta(seconds=dead_after_seconds)
    candidates = session.execute(select(Host.id, Host.name).where(
        Host.status == HostStatus.UP, Host.last_heartbeat_at < cutoff)).all()
    changed = []
    for host_id, name in candidates:
        swapped = session.execute(update(Host).where(Host.id == host_id, Host.status == HostStatus.UP)
                                  .values(status=HostStatus.NON_RESPONSIVE)).rowcount
        if swapped:
            changed.append(name)
            log.warning("host %s stopped sending heartbeats", name)
            emit(session, "host.non_responsive", f"host {name} sent no heartbeat for {dead_after_seconds:.0f} s",
                 severity=Severity.WARNING, actor="manager", host_id=host_id)
    return changed


class LivenessMonitor:
    """A background thread running mark_silent_hosts every `period` seconds until stopped."""

    def __init__(self, dead_after_seconds: float, period: float) -> None:
        self.dead_after_seconds = dead_after_seconds
        self.period = period
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="vdi-liveness", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _run(self) -> None:
        while not self._stop.wait(self.period):
            try:
                with db.session_scope() as session:
                    mark_silent_hosts(session, self.dead_after_seconds)
            except Exception:  # the loop must survive a database hiccup; it logs and tries again
                log.exception("liveness check failed")
