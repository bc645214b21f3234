"""Restarting a fenced host's desktops on the surviving hosts.

Once a fence agent confirmed that a failed host is off, none of its guests runs any more: `queue_restarts` marks
them all down and queues (ha_restarts) the ones to bring back: those marked `ha_enabled` and, by policy
(VDI_HA_RESTART_ASSIGNED), every desktop a user holds; only desktops that were running. `restart_due` then
places the queued desktops, highest `ha_priority` first, with the placement policy over the hosts that are up, and
starts them in parallel from the same disks (the overlays live on shared storage). A desktop that fits nowhere
waits (the administrator is told once, as an ALERT) and is tried again; a failed start is retried too. The broker
finds the desktop on its new host through `desktops.host_id`, so a user's next connect reaches it there.

Each desktop's start is claimed by compare-and-swap on task_state (manager.provisioning.power), so a second
manager process, or a user's connect at the same moment, cannot start it twice.
"""
from __future__ import annotations

import contextvars
import datetime as dt
import logging
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session

from core.enums import PowerState, Severity, TaskState
from core.errors import VdiError
from core.specs import DesktopSpec
from event_manager.service import emit
from manager import db
from manager.models import Desktop, HaRestart, Host, HostHaState, Template, TemplateVersion, Volume, utcnow
from manager.provisioning import nodes, placement, power
from manager.provisioning.nodes import NodeTarget
from manager.provisioning.service import desktop_spec

log = logging.getLogger(__name__)

NOT_RUNNING = (PowerState.DOWN,)
# Power actions that were under way on the failed host: void once it is off.
VOID_TASKS = (TaskState.STARTING, TaskState.STOPPING, TaskState.REBOOTING, TaskState.SUSPENDING,
              TaskState.RESUMING, TaskState.MIGRATING)


@dataclass
class Queued:
    restart: list[str]  # names of the desktops queued for a restart elsewhere
    left_down: list[str]  # names of the others that ran there (not HA): down now, not restarted


def queue_restarts(session: Session, host_id: str, *, restart_assigned: bool) -> Queued:
    """After the host's power-off was confirmed: its desktops are down, the HA ones are queued. Flushes."""
    rows = session.execute(select(Desktop.id, Desktop.name, Desktop.power_state, Desktop.task_state,
                                  Desktop.ha_enabled, Desktop.assigned_user_id)
                           .where(Desktop.host_id == host_id).order_by(Desktop.name)).all()
    queued = Queued([], [])
    queued_ids = set(session.scalars(select(HaRestart.desktop_id)))
    for desktop_id, name, state, task, ha_enabled, holder in rows:
        was_running = state not in NOT_RUNNING or task == TaskState.STARTING
        if not was_running:
            continue
        wanted = ha_enabled or (restart_assigned and holder is not None)
        if wanted and desktop_id not in queued_ids:
            session.add(HaRestart(desktop_id=desktop_id, from_host_id=host_id))
            queued.restart.append(name)
        elif not wanted:
            queued.left_down.append(name)
    session.execute(update(Desktop).where(Desktop.host_id == host_id, Desktop.power_state.not_in(NOT_RUNNING))
                    .values(power_state=PowerState.DOWN, cpu_usage=0, mem_usage=0)
                    .execution_options(synchronize_session=False))
    session.execute(update(Desktop).where(Desktop.host_id == host_id, Desktop.task_state.in_(VOID_TASKS))
                    .values(task_state=None).execution_options(synchronize_session=False))
    session.flush()
    return queued


# A restart's define and start take a node call each (NodeClient's timeouts: 60 s plus 30 s for a start).
START_GRACE_SECONDS = 300.0


@dataclass
class Start:
    desktop_id: str
    name: str
    target: NodeTarget
    spec: DesktopSpec


@dataclass
class RestartReport:
    started: list[str]
    failed: dict[str, str]
    waiting: list[str]


def _surviving_hosts(session: Session) -> list[placement.HostLoad]:
    """Hosts that are up (by status and by the HA monitor's liveness), with a node agent."""
    from manager.provisioning.service import candidate_hosts

    healthy = set(session.scalars(select(HostHaState.host_id).where(HostHaState.liveness == "up")))
    return [h for h in candidate_hosts(session) if h.host_id in healthy]


def plan_due(session: Session, *, policy: str, retry_seconds: float, now: dt.datetime) -> tuple[list[Start], list[str]]:
    """Place and claim the queued desktops that are due, highest ha_priority first. Returns the starts to make
    (each desktop claimed: task_state STARTING on its new host) and the names of those that fit nowhere (they
    wait; told once). Flushes; the caller commits before the starts are made."""
    choose = placement.get_policy(policy)
    due = session.execute(
        select(HaRestart, Desktop, Template, Volume.path)
        .join(Desktop, Desktop.id == HaRestart.desktop_id)
        .join(TemplateVersion, Desktop.template_version_id == TemplateVersion.id)
        .join(Template, TemplateVersion.template_id == Template.id)
        .join(Volume, Desktop.volume_id == Volume.id)
        .where(HaRestart.next_try_at <= now)
        .order_by(Desktop.ha_priority.desc(), HaRestart.since, Desktop.name)).all()
    if not due:
        return [], []
    hosts = _surviving_hosts(session)
    starts: list[Start] = []
    waiting: list[str] = []
    for restart, desktop, template, disk in due:
        # A start of ours that never settled (the manager died or lost the leadership during it) is taken up again
        # once START_GRACE_SECONDS have passed; any other action on the desktop is someone else's.
        stale = desktop.task_state == TaskState.STARTING and restart.attempts > 0
        if desktop.task_state is not None and not stale:
            continue
        load = choose(hosts, desktop.memory_mib)
        if load is None:
            waiting.append(desktop.name)
            best = max((h.free_memory_mib for h in hosts), default=0)
            restart.next_try_at = now + dt.timedelta(seconds=retry_seconds)
            restart.last_error = (f"no surviving host has {desktop.memory_mib} MiB free ({len(hosts)} host(s) up; "
                                  f"the most free is {best} MiB)") if hosts else "no host is up"
            if not restart.waiting_reported:
                restart.waiting_reported = 1
                emit(session, "desktop.ha_waiting", f"desktop {desktop.name} cannot be restarted: "
                     f"{restart.last_error}; it waits and is tried again every {retry_seconds:.0f} s",
                     severity=Severity.ALERT, actor="ha", desktop_id=desktop.id, host_id=restart.from_host_id)
            continue
        claimed = session.execute(
            update(Desktop).where(Desktop.id == desktop.id, Desktop.task_state == TaskState.STARTING if stale
                                  else Desktop.task_state.is_(None))
            .values(task_state=TaskState.STARTING, host_id=load.host_id)
            .execution_options(synchronize_session=False)).rowcount
        if not claimed:
            continue
        load.free_memory_mib -= desktop.memory_mib
        load.desktops += 1
        restart.attempts += 1
        restart.next_try_at = now + dt.timedelta(seconds=START_GRACE_SECONDS)  # settled long before, normally
        host = session.get(Host, load.host_id)
        starts.append(Start(desktop.id, desktop.name, nodes.target_of_host(host),
                            desktop_spec(desktop, template, disk, host.display_listen)))
    session.flush()
    return starts, waiting


def _start(item: Start) -> str | None:
    """Define the desktop on its new host and start it; None when it runs, else why not."""
    try:
        nodes.define(item.target, item.spec)
        state = nodes.state_of(nodes.power(item.target, item.desktop_id, "start"))
    except VdiError as exc:
        return exc.message
    return None if state == PowerState.UP else f"it is {state.value} after the start"


def settle_starts(session: Session, results: Sequence[tuple[Start, str | None]], *, retry_seconds: float,
                  now: dt.datetime) -> None:
    """Record each start: running desktops leave the queue; failed ones are tried again later. Flushes."""
    for item, error in results:
        if error is None:
            power.settle(session, item.desktop_id, TaskState.STARTING, PowerState.UP)
            session.execute(delete(HaRestart).where(HaRestart.desktop_id == item.desktop_id))
            emit(session, "desktop.ha_restarted", f"desktop {item.name} was restarted on host "
                 f"{item.target.host_name} after its host failed", actor="ha", desktop_id=item.desktop_id,
                 host_id=item.target.host_id)
        else:
            power.settle(session, item.desktop_id, TaskState.STARTING, None)
            session.execute(update(HaRestart).where(HaRestart.desktop_id == item.desktop_id).values(
                next_try_at=now + dt.timedelta(seconds=retry_seconds), last_error=error[:2000]))
            emit(session, "desktop.ha_restart_failed", f"desktop {item.name} could not be restarted on host "
                 f"{item.target.host_name}: {error}; tried again in {retry_seconds:.0f} s",
                 severity=Severity.ERROR, actor="ha", desktop_id=item.desktop_id, host_id=item.target.host_id)
    session.flush()


def restart_due(*, policy: str, parallel: int, retry_seconds: float) -> RestartReport:
    """One pass: plan (one transaction), start in parallel (no transaction), settle (one transaction)."""
    now = utcnow()
    with db.session_scope() as session:
        starts, waiting = plan_due(session, policy=policy, retry_seconds=retry_seconds, now=now)
    if not starts:
        return RestartReport([], {}, waiting)
    with ThreadPoolExecutor(max_workers=min(parallel, len(starts)), thread_name_prefix="vdi-ha-start") as pool:
        # each start runs in a copy of the round's context, so it carries the leader's epoch: a former leader's
        # node calls are refused by the agents too (docs/ha.md, the fence)
        futures = [pool.submit(contextvars.copy_context().run, _start, item) for item in starts]
        results = [(item, future.result()) for item, future in zip(starts, futures)]
    with db.session_scope() as session:
        settle_starts(session, results, retry_seconds=retry_seconds, now=utcnow())
    return RestartReport([s.name for s, e in results if e is None], {s.name: e for s, e in results if e}, waiting)


def waiting_restarts(session: Session) -> list[dict]:
    """The queue as the operator sees it (GET /api/v1/ha): desktop, from which host, since, attempts, why."""
    rows = session.execute(select(HaRestart, Desktop.name, Desktop.ha_priority)
                           .join(Desktop, Desktop.id == HaRestart.desktop_id)
                           .order_by(Desktop.ha_priority.desc(), HaRestart.since)).all()
    return [{"desktop_id": r.desktop_id, "desktop": name, "ha_priority": priority, "from_host_id": r.from_host_id,
             "since": r.since.isoformat(), "attempts": r.attempts, "last_error": r.last_error}
            for r, name, priority in rows]

