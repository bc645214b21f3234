"""The dashboard's figures: hosts with their load, desktops by state, console sessions, pool usage, open alerts
and running jobs.

Each function below is ONE aggregate query (GROUP BY / count FILTER, never loading the rows it counts), so the
whole dashboard stays a handful of statements over 100,000 desktops. `snapshot(session)` gathers them; the page
(/admin/dashboard, manager.web.admin.dashboard) and the API (GET /api/v1/dashboard, manager.api.dashboard) both
render that one object, so the page's numbers are the API's.
"""
from __future__ import annotations

import datetime as dt

from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import BigInteger, String, case, cast, func, literal, select, type_coerce, union_all
from sqlalchemy.orm import Session

from broker.sessions import LIVE
from core.enums import HostStatus, JobState, PowerState, Protocol, SessionState, Severity, TaskState
from manager.api.schemas import EventOut
from manager.models import Alert, Desktop, DesktopSession, Event, Host, Job, Pool, utcnow

# `alerts.open` and `alerts.latest` count events of one of these severities written in the last ALERT_WINDOW (the
# console's events drawer uses the same rule, live.js isAlert); `alerts.unresolved` counts the alerts with a state
# (event_manager/alerts.py) that are open or acknowledged.
ALERT_SEVERITIES = (Severity.ALERT, Severity.ERROR)
ALERT_WINDOW = dt.timedelta(hours=24)
NEARLY_FULL_PCT = 90  # a pool with at least this share of its desktops held is flagged
BUSIEST_HOSTS = 12  # hosts listed by load (the counts and averages cover all of them)
FULLEST_POOLS = 25  # pools listed by usage (with every nearly full one, up to MAX_POOLS)
MAX_POOLS = 100
LATEST_ALERTS = 10


class HostLoad(BaseModel):
    id: str
    name: str
    status: HostStatus
    cpus: int
    cpu_usage: int = Field(description="percent")
    memory_mib: int
    mem_usage: int = Field(description="percent")
    active_desktops: int


class HostSummary(BaseModel):
    total: int
    by_status: dict[HostStatus, int] = Field(description="every status, zeros included")
    cpus: int = Field(description="CPUs of the hosts that are up")
    memory_mib: int = Field(description="memory of the hosts that are up")
    cpu_usage: int = Field(description="percent: the up hosts' CPU use, weighted by their CPUs")
    mem_usage: int = Field(description="percent: the up hosts' memory use, weighted by their memory")
    ksm_pages_shared: int = Field(0, description="KSM pages shared on the hosts that are up (memory density)")
    memory_saved_mib: int = Field(0, description="memory KSM saves on the hosts that are up")


class DesktopStates(BaseModel):
    total: int
    by_power_state: dict[PowerState, int] = Field(description="every power state, zeros included")
    by_task_state: dict[TaskState, int] = Field(description="what the manager is doing; every task, zeros included")
    busy: int = Field(description="desktops with a task under way")


class SessionCounts(BaseModel):
    live: int = Field(description="pending + connected + disconnected (not ended)")
    pending: int = Field(description="a ticket was issued, no console client attached yet")
    connected: int
    disconnected: int
    by_protocol: dict[str, int] = Field(description="live sessions by console protocol (spice, rdp, vnc…)")


class PoolUsage(BaseModel):
    id: str
    name: str
    pool_type: str
    size: int = Field(description="the pool's configured size")
    desktops: int = Field(description="desktops that exist in the pool now")
    assigned: int = Field(description="desktops held by a user")
    free: int = Field(description="desktops nobody holds")
    prestarted: int = Field(description="how many free desktops the pool keeps running")
    ready: int = Field(description="free desktops that are up (prestarted and waiting for a user)")
    in_use_pct: int = Field(description="assigned as a percent of max(size, desktops)")
    nearly_full: bool = Field(description=f"in_use_pct >= {NEARLY_FULL_PCT}")


class PoolSummary(BaseModel):
    total: int = Field(description="pools")
    nearly_full: int = Field(description=f"pools with {NEARLY_FULL_PCT} % or more of their desktops held")
    fullest: list[PoolUsage] = Field(description=f"the {FULLEST_POOLS} fullest pools, or every nearly full one "
                                                 f"(up to {MAX_POOLS}), fullest first")


class AlertItem(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: str
    kind: str
    object_kind: str
    object_id: str
    object_name: str
    state: str
    message: str
    opened_at: dt.datetime


class AlertSummary(BaseModel):
    open: int = Field(description="alert and error events in the window")
    window_hours: int
    latest: list[EventOut]
    unresolved: int = Field(description="alerts open or acknowledged (GET /api/v1/alerts)")
    unresolved_latest: list[AlertItem] = Field(description=f"the {LATEST_ALERTS} newest of them")


class JobCounts(BaseModel):
    running: int
    pending: int


class Dashboard(BaseModel):
    generated_at: dt.datetime
    hosts: HostSummary
    busiest_hosts: list[HostLoad] = Field(description="hosts that are up, busiest first, then the others")
    desktops: DesktopStates
    sessions: SessionCounts
    pools: PoolSummary
    alerts: AlertSummary
    jobs: JobCounts


def _pct(part: float, whole: float) -> int:
    return round(100 * part / whole) if whole else 0


def host_summary(session: Session) -> HostSummary:
    """Hosts by status, and the CPU and memory use of those that are up (one GROUP BY status)."""
    rows = session.execute(
        select(Host.status, func.count(), func.coalesce(func.sum(Host.cpus), 0),
               func.coalesce(func.sum(Host.memory_mib), 0),
               func.coalesce(func.sum(Host.cpu_usage * Host.cpus), 0),
               func.coalesce(func.sum(Host.mem_usage * cast(Host.memory_mib, BigInteger)), 0),
               func.coalesce(func.sum(Host.ksm_pages_shared), 0), func.coalesce(func.sum(Host.ksm_saved_mib), 0))
        .group_by(Host.status)).all()
    by_status = {status: 0 for status in HostStatus}
    up = (0, 0, 0, 0, 0, 0)
    for status, count, *figures in rows:
        by_status[status] = count
        if status == HostStatus.UP:
            up = tuple(figures)
    cpus, memory, cpu_weighted, mem_weighted, shared, saved = (int(v) for v in up)
    return HostSummary(total=sum(by_status.values()), by_status=by_status, cpus=cpus, memory_mib=memory,
                       cpu_usage=_pct(cpu_weighted / 100, cpus), mem_usage=_pct(mem_weighted / 100, memory),
                       ksm_pages_shared=shared, memory_saved_mib=saved)


def busiest_hosts(session: Session, limit: int = BUSIEST_HOSTS) -> list[HostLoad]:
    """The hosts that are up, the most loaded (CPU or memory) first, then the others: all of them in a small
    installation, the ones to look at in a large one."""
    load = case((Host.cpu_usage >= Host.mem_usage, Host.cpu_usage), else_=Host.mem_usage)  # SQLite has no greatest()
    rows = session.execute(
        select(Host.id, Host.name, Host.status, Host.cpus, Host.cpu_usage, Host.memory_mib, Host.mem_usage,
               Host.active_desktops)
        .order_by(case((Host.status == HostStatus.UP, 0), else_=1), load.desc(), Host.name).limit(limit))
    return [HostLoad.model_validate(row._mapping) for row in rows]


def desktop_states(session: Session) -> DesktopStates:
    """Desktops by power state and by task: one statement of two GROUP BYs, each read from an index (power_state's,
    and the partial index of the few desktops with a task) rather than from the table."""
    # the two state columns read as plain strings: the union's one column cannot be both enum types
    power = (select(literal("power"), type_coerce(Desktop.power_state, String).label("state"), func.count())
             .group_by(Desktop.power_state))
    tasks = (select(literal("task"), type_coerce(Desktop.task_state, String).label("state"), func.count())
             .where(Desktop.task_state.is_not(None)).group_by(Desktop.task_state))
    by_power = {state: 0 for state in PowerState}
    by_task = {task: 0 for task in TaskState}
    for kind, state, count in session.execute(union_all(power, tasks)):
        if kind == "power":
            by_power[PowerState(state)] += count
        else:
            by_task[TaskState(state)] += count
    return DesktopStates(total=sum(by_power.values()), by_power_state=by_power, by_task_state=by_task,
                         busy=sum(by_task.values()))


def console_sessions(session: Session) -> SessionCounts:
    """Live console sessions by protocol and state (one GROUP BY over the live ones)."""
    by_protocol = {protocol.value: 0 for protocol in Protocol}
    by_state = {state: 0 for state in LIVE}
    for protocol, state, count in session.execute(
            select(DesktopSession.protocol, DesktopSession.state, func.count())
            .where(DesktopSession.state.in_(LIVE)).group_by(DesktopSession.protocol, DesktopSession.state)):
        by_protocol[protocol] = by_protocol.get(protocol, 0) + count
        by_state[state] += count
    return SessionCounts(live=sum(by_state.values()), pending=by_state[SessionState.PENDING],
                         connected=by_state[SessionState.CONNECTED],
                         disconnected=by_state[SessionState.DISCONNECTED], by_protocol=by_protocol)


def pool_usage(session: Session, listed: int = FULLEST_POOLS) -> PoolSummary:
    """Every pool's desktops counted (one statement: the pools joined to two GROUP BY pool counts, each read from an
    index, ix_desktops_pool_free and the free-pick index): how many pools there are, how many are nearly full, and
    the fullest ones."""
    held = (select(Desktop.pool_id, func.count().label("desktops"), func.count(Desktop.assigned_user_id).label("assigned"))
            .where(Desktop.pool_id.is_not(None)).group_by(Desktop.pool_id).subquery())
    ready = (select(Desktop.pool_id, func.count().label("ready"))
             .where(Desktop.pool_id.is_not(None), Desktop.assigned_user_id.is_(None),
                    Desktop.power_state == PowerState.UP).group_by(Desktop.pool_id).subquery())
    rows = session.execute(
        select(Pool.id, Pool.name, Pool.pool_type, Pool.size, Pool.prestarted, func.coalesce(held.c.desktops, 0),
               func.coalesce(held.c.assigned, 0), func.coalesce(ready.c.ready, 0))
        .outerjoin(held, held.c.pool_id == Pool.id).outerjoin(ready, ready.c.pool_id == Pool.id)).all()
    usage = []
    for row in rows:
        size, desktops, assigned = row[3], row[5], row[6]
        usage.append((_pct(assigned, max(size, desktops)), row))
    usage.sort(key=lambda u: (-u[0], u[1][1]))
    nearly_full = sum(1 for pct, _ in usage if pct >= NEARLY_FULL_PCT)
    fullest = [PoolUsage(id=pool_id, name=name, pool_type=pool_type.value, size=size, desktops=desktops,
                         assigned=assigned, free=desktops - assigned, prestarted=prestarted, ready=ready,
                         in_use_pct=pct, nearly_full=pct >= NEARLY_FULL_PCT)
               for pct, (pool_id, name, pool_type, size, prestarted, desktops, assigned, ready)
               in usage[:min(max(listed, nearly_full), MAX_POOLS)]]
    return PoolSummary(total=len(usage), nearly_full=nearly_full, fullest=fullest)


def open_alert_count(session: Session, now: dt.datetime | None = None) -> int:
    """Alert and error events of the last ALERT_WINDOW (one count over the severity and time indexes)."""
    since = (now or utcnow()) - ALERT_WINDOW
    return session.scalar(select(func.count()).select_from(Event).where(
        Event.severity.in_(ALERT_SEVERITIES), Event.time >= since, Event.deleted.is_(False))) or 0


def latest_alerts(session: Session, limit: int = LATEST_ALERTS, now: dt.datetime | None = None) -> list[EventOut]:
    """The newest alert and error events of the last ALERT_WINDOW."""
    since = (now or utcnow()) - ALERT_WINDOW
    rows = session.scalars(select(Event).where(
        Event.severity.in_(ALERT_SEVERITIES), Event.time >= since, Event.deleted.is_(False))
        .order_by(Event.id.desc()).limit(limit))
    return [EventOut.model_validate(row) for row in rows]


def unresolved_alerts(session: Session, limit: int = LATEST_ALERTS) -> tuple[int, list[AlertItem]]:
    """How many alerts are open or acknowledged, and the newest of them (event_manager/alerts.py)."""
    unresolved = Alert.state != "resolved"
    count = session.scalar(select(func.count()).select_from(Alert).where(unresolved)) or 0
    rows = session.scalars(select(Alert).where(unresolved).order_by(Alert.opened_at.desc(), Alert.id).limit(limit))
    return count, [AlertItem.model_validate(row) for row in rows]


def job_counts(session: Session) -> JobCounts:
    """Jobs waiting and running (one GROUP BY over the unfinished ones)."""
    counts = dict(session.execute(select(Job.state, func.count())
                                  .where(Job.state.in_((JobState.PENDING, JobState.RUNNING))).group_by(Job.state)).all())
    return JobCounts(running=counts.get(JobState.RUNNING, 0), pending=counts.get(JobState.PENDING, 0))


def snapshot(session: Session) -> Dashboard:
    """Everything the dashboard shows, as of now."""
    now = utcnow()
    unresolved, unresolved_latest = unresolved_alerts(session)
    return Dashboard(generated_at=now, hosts=host_summary(session), busiest_hosts=busiest_hosts(session),
                     desktops=desktop_states(session), sessions=console_sessions(session), pools=pool_usage(session),
                     alerts=AlertSummary(open=open_alert_count(session, now),
                                         window_hours=int(ALERT_WINDOW.total_seconds() // 3600),
                                         latest=latest_alerts(session, now=now), unresolved=unresolved,
                                         unresolved_latest=unresolved_latest),
                     jobs=job_counts(session))
