"""Heartbeat ingest: a node's host stats and every domain's stats, written in batch.

Libvirt decides power state; the database decides intent. A desktop whose reported state differs from the
stored one is updated and one event records the transition (pollers log transitions, not repeats).
"""
from __future__ import annotations

import datetime as dt
import ipaddress
from typing import Any

from sqlalchemy import or_, select, text, update
from sqlalchemy.orm import Session

from core.enums import HostStatus, PowerState, Severity
from core.specs import DomainStats, HostCaps
from event_manager.service import emit
from manager.jobs import enqueue
from manager.models import Desktop, Event, Host, utcnow

_STATES = {s.value for s in PowerState}
# A host this busy records host.high_cpu: at most once per 30 minutes per host (the catalog's flood suppression).
# oVirt's LogMaxCpuUsedThresholdInPercentage has the same default.
HIGH_CPU_PERCENT = 95


def ingest_heartbeat(session: Session, host: Host, payload: dict[str, Any]) -> dict[str, int]:
    """Store one heartbeat. Returns counts of updated desktops, state transitions, unknown domains and foreign ones
    (desktops placed on another host: ignored)."""
    now = utcnow()
    caps = HostCaps.from_dict(payload.get("caps") or {"hostname": host.name, "domain_types": [], "cpus": 0,
                                                      "memory_mib": 0, "free_memory_mib": 0})
    domains = [DomainStats.from_dict(d) for d in payload.get("domains") or []]
    seq = int(payload.get("seq") or 0)

    was_up = host.status == HostStatus.UP
    host.cpus, host.memory_mib, host.free_memory_mib = caps.cpus, caps.memory_mib, caps.free_memory_mib
    host.cpu_model, host.libvirt_version = caps.cpu_model, caps.libvirt_version
    host.domain_types = ",".join(caps.domain_types)
    host.ksm_running, host.ksm_pages_shared = caps.ksm_running, caps.ksm_pages_shared
    host.ksm_pages_sharing, host.ksm_saved_mib = caps.ksm_pages_sharing, caps.ksm_saved_mib
    host.cpu_usage = _percent(payload.get("cpu_usage"))
    host.mem_usage = _percent(payload.get("mem_usage"))
    if host.cpu_usage >= HIGH_CPU_PERCENT:
        emit(session, "host.high_cpu", f"host {host.name} CPU usage is {host.cpu_usage}% (threshold "
             f"{HIGH_CPU_PERCENT}%)", actor=host.name, host_id=host.id)
    host.last_heartbeat_at, host.heartbeat_seq = now, seq
    started = payload.get("agent_started_at")
    if started:
        started_at = dt.datetime.fromisoformat(str(started).replace("Z", "+00:00"))
        if host.agent_started_at != started_at:
            # A new agent process: compare what it hosts with what the database intends, once.
            host.agent_started_at = started_at
            enqueue(session, "hosts.reconcile", params={"host_id": host.id}, target_kind="host",
                    target_id=host.id, description=f"reconcile host {host.name} after its agent started")
    host.active_desktops = sum(1 for d in domains if d.state == PowerState.UP.value)
    if not was_up and host.status != HostStatus.MAINTENANCE and _came_up(session, host):
        emit(session, "host.up", f"host {host.name} is up (heartbeat received)", actor=host.name, host_id=host.id)

    by_id = {d.uuid: d for d in domains}
    states = {i: PowerState(d.state) if d.state in _STATES else PowerState.UNKNOWN for i, d in by_id.items()}
    # Steady state first: the figures of every desktop whose power state did not change, in one statement that
    # also says which those were. What remains is a transition or a domain we do not know: rare, looked up.
    steady = _write_steady_stats(session, host.id, by_id, states)
    rest = [i for i in by_id if i not in steady]
    found = session.execute(select(Desktop.id, Desktop.power_state, Desktop.host_id)
                            .where(Desktop.id.in_(rest))).all() if rest else []
    # A node speaks only for its own desktops (and adopts unplaced ones): a report of a desktop the database places
    # on another host is refused, or one node's token could claim any desktop.
    foreign = {r.id: r.host_id for r in found if r.host_id not in (None, host.id)}
    _warn_foreign(session, host, foreign, by_id, now)
    known = {r.id: r.power_state for r in found if r.id not in foreign}
    rows: list[dict[str, Any]] = []
    transitions = 0
    for desktop_id, old_state in known.items():
        stats = by_id[desktop_id]
        new_state = states[desktop_id]
        row = {"id": desktop_id, "cpu_usage": _percent(stats.cpu_usage), "mem_usage": _percent(stats.mem_usage),
               "host_id": host.id}
        if new_state != old_state:
            row["power_state"] = new_state
            if new_state == PowerState.UP:
                row["started_at"] = now
            elif new_state == PowerState.DOWN:
                row["logged_in_user"] = ""  # nobody is logged in on a stopped guest (its agent says nothing more)
            transitions += 1
            emit(session, "desktop.state_changed", f"desktop {stats.name} is {new_state.value} on {host.name} "
                 f"(was {old_state.value})", severity=Severity.NORMAL, actor=host.name, desktop_id=desktop_id,
                 host_id=host.id)
        rows.append(row)
    steady_rows = [r for r in rows if "power_state" not in r]
    if steady_rows:  # on SQLite every steady desktop; on Postgres one whose state changed back meanwhile
        session.execute(update(Desktop), steady_rows)
    for row in (r for r in rows if "power_state" in r):  # transitions are rare: one statement each is fine
        session.execute(update(Desktop).where(Desktop.id == row.pop("id")).values(**row))
    _write_guest_facts(session, host, payload.get("guest"))
    return {"desktops": len(steady) + len(rows), "transitions": transitions,
            "unknown": len(by_id) - len(steady) - len(known) - len(foreign), "foreign": len(foreign)}


FOREIGN_WARNING_EVERY = dt.timedelta(minutes=10)


def preferred_address(ips: list[str]) -> str:
    """The address a client connects to (RDP): the first global IPv4, else any IPv4, else a global IPv6."""
    parsed = []
    for text_ in ips:
        try:
            parsed.append(ipaddress.ip_address(text_))
        except ValueError:
            continue
    for wanted in (lambda a: a.version == 4 and not a.is_link_local and not a.is_loopback,
                   lambda a: a.version == 4 and not a.is_loopback,
                   lambda a: a.version == 6 and not a.is_link_local and not a.is_loopback):
        found = next((a for a in parsed if wanted(a)), None)
        if found is not None:
            return str(found)
    return ""


def _write_guest_facts(session: Session, host: Host, facts: Any) -> None:
    """What the node's guest agents said (only facts that changed: rare), on the desktops placed on this host or
    on none. Desktop.ip is the address clients connect to; the lists are stored comma-separated."""
    if not isinstance(facts, dict):
        return
    for desktop_id, fact in facts.items():
        if not isinstance(fact, dict):
            continue
        ips, users, apps = (_texts(fact.get(key)) for key in ("ips", "users", "apps"))
        hostname = fact.get("hostname") if isinstance(fact.get("hostname"), str) else ""
        session.execute(update(Desktop).where(
            Desktop.id == str(desktop_id), or_(Desktop.host_id == host.id, Desktop.host_id.is_(None))).values(
            ip=preferred_address(ips), guest_hostname=hostname[:255], logged_in_user=",".join(users)[:255],
            installed_apps=",".join(apps)))


def _texts(value: Any) -> list[str]:
    return [v.replace(",", " ").strip() for v in value if isinstance(v, str) and v.strip()] \
        if isinstance(value, list) else []


def _warn_foreign(session: Session, host: Host, foreign: dict[str, str], by_id: dict[str, DomainStats],
                  now: dt.datetime) -> None:
    """A warning event per desktop that `host` reports but the database places elsewhere (a stale host still
    running a desktop restarted on another, or a node speaking for desktops that are not its own), at most one per
    host and desktop every FOREIGN_WARNING_EVERY: heartbeats come every few seconds."""
    if not foreign:
        return
    warned = set(session.scalars(select(Event.desktop_id).where(
        Event.code == "host.foreign_desktop", Event.host_id == host.id, Event.desktop_id.in_(list(foreign)),
        Event.time > now - FOREIGN_WARNING_EVERY)))
    for desktop_id in sorted(set(foreign) - warned):
        emit(session, "host.foreign_desktop", f"host {host.name} reports desktop {by_id[desktop_id].name} "
             f"({by_id[desktop_id].state}), which runs on another host; its report was ignored",
             severity=Severity.WARNING, actor=host.name, desktop_id=desktop_id, host_id=host.id)


# One constant statement (compiled once, cached) taking the figures as arrays: no per-row SQL. It writes only
# desktops whose stored power state is the reported one, placed on this host or on none, and returns their ids.
_PG_WRITE_STEADY_STATS = text(
    "UPDATE desktops AS d SET cpu_usage = r.cpu_usage, mem_usage = r.mem_usage, host_id = :host_id "
    "FROM unnest(CAST(:ids AS varchar[]), CAST(:cpu AS integer[]), CAST(:mem AS integer[]), "
    "CAST(:states AS varchar[])) AS r(id, cpu_usage, mem_usage, state) "
    "WHERE d.id = r.id AND d.power_state = r.state AND (d.host_id = :host_id OR d.host_id IS NULL) "
    "RETURNING d.id")


def _write_steady_stats(session: Session, host_id: str, by_id: dict[str, DomainStats],
                        states: dict[str, PowerState]) -> set[str]:
    """Postgres: store the figures of the desktops whose power state did not change; their ids. The embedded
    SQLite answers the empty set and the caller writes every desktop after looking its state up."""
    if not by_id or session.get_bind().dialect.name != "postgresql":
        return set()
    ids = list(by_id)
    return set(session.scalars(_PG_WRITE_STEADY_STATS, {
        "host_id": host_id, "ids": ids, "cpu": [_percent(by_id[i].cpu_usage) for i in ids],
        "mem": [_percent(by_id[i].mem_usage) for i in ids], "states": [states[i].value for i in ids]}))


def _came_up(session: Session, host: Host) -> bool:
    """Mark the host up unless it is up already or in maintenance, as a compare-and-swap: an administrator who
    puts the host into maintenance while this heartbeat is being stored wins (a host in maintenance stays there
    until it is activated, whatever its heartbeats say)."""
    return bool(session.execute(
        update(Host).where(Host.id == host.id, Host.status.not_in([HostStatus.UP, HostStatus.MAINTENANCE]))
        .values(status=HostStatus.UP)).rowcount)


def _percent(value: Any) -> int:
    try:
        return max(0, min(100, int(round(float(value)))))
    except (TypeError, ValueError):
        return 0
