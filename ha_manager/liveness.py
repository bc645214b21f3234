"""Host liveness from node heartbeats plus a direct probe of the agent: up -> connecting -> non_responsive.

    up              the last heartbeat is younger than `connecting_after`
    connecting      heartbeats are late (suspected; one WARNING event); the agent is probed directly each round
    non_responsive  no heartbeat for `non_responsive_after` AND the probe failed too: the host has failed
                    (one ALERT event); fencing decides what happens to it (ha_manager.failover)

A heartbeat that comes back (with its domains still running, as after an agent restart) returns the host to up
from either state before anything was fenced: a restarted agent is not a host failure. A probe that answers keeps
a host in connecting however late its heartbeats are: the agent and its hypervisor are alive, only the path of
the heartbeats is not. Timings come from the settings (VDI_HA_*; docs/ha.md).

`next_liveness` is the pure rule; `observe` reads the hosts, `to_probe` names the late ones (probed outside any
transaction) and `apply` moves every host the monitor may judge (hosts in maintenance are left alone), each change
a compare-and-swap on host_ha_states so two manager processes cannot both act.
"""
from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from core.enums import HostStatus, Severity
from event_manager.service import emit
from manager.models import Host, HostHaState, utcnow

log = logging.getLogger(__name__)

UP, CONNECTING, NON_RESPONSIVE = "up", "connecting", "non_responsive"
LIVENESS = (UP, CONNECTING, NON_RESPONSIVE)


@dataclass(frozen=True)
class LivenessTimings:
    connecting_after: float
    non_responsive_after: float

    def __post_init__(self) -> None:
        if not 0 < self.connecting_after <= self.non_responsive_after:
            raise ValueError(f"HA timings: connecting after {self.connecting_after} s must be positive and at most "
                             f"non-responsive after {self.non_responsive_after} s")


def next_liveness(current: str, heartbeat_age: float | None, probe_ok: bool | None,
                  timings: LivenessTimings) -> str:
    """The host's liveness now. `heartbeat_age` is None for a host that never sent one (it stays where it is: a
    host being installed is not a failure); `probe_ok` is None when no probe was made."""
    if heartbeat_age is None:
        return current
    if heartbeat_age < timings.connecting_after:
        return UP
    if probe_ok:
        return CONNECTING  # alive, reachable; only its heartbeats are late
    if heartbeat_age >= timings.non_responsive_after:
        return NON_RESPONSIVE
    return CONNECTING if current != NON_RESPONSIVE else NON_RESPONSIVE


@dataclass
class HostView:
    """One host as the monitor saw it in one round."""

    host_id: str
    name: str
    status: HostStatus
    liveness: str
    heartbeat_age: float | None
    fence_state: str


def ensure_states(session: Session) -> None:
    """A host_ha_states row for every host that has none (new hosts start up)."""
    known = set(session.scalars(select(HostHaState.host_id)))
    for host_id in session.scalars(select(Host.id)):
        if host_id not in known:
            session.add(HostHaState(host_id=host_id, liveness=UP))
    session.flush()


def observe(session: Session, now: dt.datetime) -> list[HostView]:
    """Every host with its heartbeat age and HA state (rows made for new hosts). Flushes."""
    ensure_states(session)
    rows = session.execute(select(Host.id, Host.name, Host.status, Host.last_heartbeat_at, HostHaState.liveness,
                                  HostHaState.fence_state)
                           .join(HostHaState, HostHaState.host_id == Host.id).order_by(Host.name)).all()
    return [HostView(host_id, name, status, liveness, (now - last).total_seconds() if last is not None else None,
                     fence_state) for host_id, name, status, last, liveness, fence_state in rows]


def to_probe(views: list[HostView], timings: LivenessTimings) -> list[str]:
    """The hosts whose heartbeats are late: their agents are probed directly (outside any transaction)."""
    return [v.host_id for v in views if v.status != HostStatus.MAINTENANCE and v.heartbeat_age is not None
            and v.heartbeat_age >= timings.connecting_after]


def apply(session: Session, views: list[HostView], probes: dict[str, bool], timings: LivenessTimings,
          now: dt.datetime) -> list[HostView]:
    """Move each judged host (not in maintenance) to its liveness now, by compare-and-swap, with one event per
    change; returns the views as they are afterwards. Flushes; the caller commits."""
    for view in views:
        if view.status == HostStatus.MAINTENANCE:
            continue
        probe_ok = probes.get(view.host_id)
        new = next_liveness(view.liveness, view.heartbeat_age, probe_ok, timings)
        if new != view.liveness and _swap(session, view.host_id, view.liveness, new, now):
            old, view.liveness = view.liveness, new
            _record(session, view, old, new, view.heartbeat_age, probe_ok)
            if new == UP:
                view.fence_state = ""
    return views


def _swap(session: Session, host_id: str, old: str, new: str, now: dt.datetime) -> bool:
    values: dict = {"liveness": new, "liveness_since": now}
    if new == UP:
        values.update(fence_state="", fence_detail="", fence_changed_at=now)  # a host back up starts afresh
    return bool(session.execute(update(HostHaState).where(HostHaState.host_id == host_id,
                                                          HostHaState.liveness == old).values(**values)).rowcount)


def _record(session: Session, view: HostView, old: str, new: str, age: float | None, probe_ok: bool | None) -> None:
    silent = f"no heartbeat for {age:.0f} s" if age is not None else "no heartbeat yet"
    if new == CONNECTING:
        why = "its agent answers a direct probe" if probe_ok else "its agent does not answer a direct probe yet"
        emit(session, "host.suspected", f"host {view.name} is connecting: {silent}; {why}",
             severity=Severity.WARNING, actor="ha", host_id=view.host_id)
    elif new == NON_RESPONSIVE:
        session.execute(update(Host).where(Host.id == view.host_id, Host.status == HostStatus.UP)
                        .values(status=HostStatus.NON_RESPONSIVE))
        emit(session, "host.non_responsive", f"host {view.name} failed: {silent} and its agent does not answer; its desktops "
             "are restarted elsewhere once it is fenced", severity=Severity.ALERT, actor="ha", host_id=view.host_id)
    else:
        was = "fenced" if view.fence_state == "fenced" else old.replace("_", "-")
        emit(session, "host.recovered", f"host {view.name} sends heartbeats again (it was {was})",
             actor="ha", host_id=view.host_id)
    log.warning("host %s: %s -> %s (%s)", view.name, old, new, silent)
