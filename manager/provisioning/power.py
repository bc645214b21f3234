"""Power actions on desktops as compare-and-swap on task_state (two "start" clicks cannot send two starts).

    claim   UPDATE desktops SET task_state='starting' WHERE id=:id AND task_state IS NULL   (one winner)
    act     the node call, outside any transaction
    settle  UPDATE desktops SET task_state=NULL, power_state=:s WHERE id=:id AND task_state='starting'

`run_power_action` and `ensure_running` open their own short transactions (they are used from routes and
jobs alike); the losers of a claim get DesktopBusy (409) naming what the desktop is doing.
"""
from __future__ import annotations

import logging
import time
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from broker.errors import DesktopStartTimeout
from core.enums import PowerState, Severity, StrEnum, TaskState
from core.errors import Conflict, DesktopBusy, DomainNotFound, NotFound, VdiError
from event_manager.service import emit
from manager import db
from manager.models import Desktop, utcnow
from manager.provisioning import nodes
from manager.provisioning.nodes import NodeTarget

log = logging.getLogger(__name__)


class PowerAction(StrEnum):
    START = "start"
    STOP = "stop"  # graceful (ACPI) shutdown
    POWEROFF = "poweroff"  # pull the plug
    REBOOT = "reboot"
    SUSPEND = "suspend"  # pause the guest's CPUs, its memory kept (libvirt's suspend)
    RESUME = "resume"


TASK_OF = {PowerAction.START: TaskState.STARTING, PowerAction.STOP: TaskState.STOPPING,
           PowerAction.POWEROFF: TaskState.STOPPING, PowerAction.REBOOT: TaskState.REBOOTING,
           PowerAction.SUSPEND: TaskState.SUSPENDING, PowerAction.RESUME: TaskState.RESUMING}
NODE_ACTION = {PowerAction.START: "start", PowerAction.STOP: "shutdown", PowerAction.POWEROFF: "poweroff",
               PowerAction.REBOOT: "reboot", PowerAction.SUSPEND: "suspend", PowerAction.RESUME: "resume"}
PAST = {PowerAction.START: "started", PowerAction.STOP: "shut down", PowerAction.POWEROFF: "powered off",
        PowerAction.REBOOT: "rebooted", PowerAction.SUSPEND: "suspended", PowerAction.RESUME: "resumed"}
DEFAULT_START_TIMEOUT_S = 120.0
DEFAULT_STOP_TIMEOUT_S = 60.0  # how long a graceful shutdown may take before it counts as failed (504)
_POLL_S = 0.1


def claim(session: Session, desktop_id: str, task: TaskState, action: str, *, unassigned_only: bool = False) \
        -> Desktop:
    """Compare-and-swap task_state from idle to `task`. Raises NotFound, or DesktopBusy if another action holds
    the desktop. `unassigned_only` (the disk actions: reset, removal): a desktop assigned to a user is not taken
    either (Conflict), in the same statement, so an assignment cannot slip in between a check and the claim.
    Flushes; the claim is visible to others once the caller commits."""
    stmt = update(Desktop).where(Desktop.id == desktop_id, Desktop.task_state.is_(None))
    if unassigned_only:
        stmt = stmt.where(Desktop.assigned_user_id.is_(None))
    claimed = session.execute(stmt.values(task_state=task).execution_options(synchronize_session=False)).rowcount
    desktop = session.get(Desktop, desktop_id, populate_existing=True)
    if desktop is None:
        raise NotFound(kind="desktop", id=desktop_id)
    if not claimed:
        if unassigned_only and desktop.assigned_user_id is not None:
            raise Conflict(f"desktop {desktop.name} is assigned to a user; unassign it first")
        raise DesktopBusy(desktop_id=desktop.name, state=desktop.task_state.value if desktop.task_state else "busy",
                          action=action)
    return desktop


def settle(session: Session, desktop_id: str, task: TaskState, power_state: PowerState | None) -> bool:
    """Finish a claimed action: clear task_state (only if it is still `task`) and record the power state."""
    values: dict = {"task_state": None}
    if power_state is not None:
        values["power_state"] = power_state
        if power_state == PowerState.UP:
            values["started_at"] = utcnow()
    return session.execute(update(Desktop).where(Desktop.id == desktop_id, Desktop.task_state == task)
                           .values(**values).execution_options(synchronize_session=False)).rowcount == 1


def _node_power(target: NodeTarget, desktop_id: str, action: PowerAction, actor: str, timeout: float | None) -> Any:
    def call() -> Any:
        return nodes.power(target, desktop_id, NODE_ACTION[action],
                           timeout=timeout if action == PowerAction.STOP else None)

    try:
        return call()
    except DomainNotFound:
        # The host lost the definition (its agent restarted; a test-driver or reinstalled host starts empty) and
        # its reconcile job has not run yet: a start defines the desktop from the database, as that job would, so
        # that a user connecting now gets a running desktop instead of a 404.
        from manager.node_reconcile import define_missing

        if action != PowerAction.START:  # the desktop exists: a 404 would say otherwise; nothing runs there
            raise Conflict(f"the desktop is not running: its host {target.host_name} has no domain for it "
                           f"(starting it defines it again)") from None
        if not define_missing(target.host_id, desktop_id, actor=actor):
            raise
        return call()


def _act(target: NodeTarget, desktop_id: str, name: str, action: PowerAction, actor: str,
         timeout: float | None) -> PowerState:
    task = TASK_OF[action]
    try:
        info = _node_power(target, desktop_id, action, actor, timeout)
    except VdiError as exc:
        with db.session_scope() as session:
            settle(session, desktop_id, task, None)
            emit(session, f"desktop.{action.value}_failed", f"{action.value} of desktop {name} failed: {exc.message}",
                 severity=Severity.ERROR, actor=actor, desktop_id=desktop_id, host_id=target.host_id)
        raise
    state = nodes.state_of(info)
    with db.session_scope() as session:
        settle(session, desktop_id, task, state if state != PowerState.UNKNOWN else None)
        emit(session, f"desktop.{PAST[action].replace(' ', '_')}", f"{actor} {PAST[action]} desktop {name} "
             f"on {target.host_name} (now {state.value})", actor=actor, desktop_id=desktop_id, host_id=target.host_id)
    return state


def run_power_action(desktop_id: str, action: PowerAction, *, actor: str, timeout: float | None = None) \
        -> PowerState:
    """Claim, act through the node, settle. Returns the power state the node reports.

    Raises NotFound, DesktopBusy (another action in progress: nothing is sent), Unavailable/NodeUnreachable
    when the host cannot be used, and the node's own typed errors (task_state is cleared either way)."""
    with db.session_scope() as session:
        desktop = claim(session, desktop_id, TASK_OF[action], action.value)
        name = desktop.name
        try:
            target = nodes.target_of_desktop(session, desktop)
        except VdiError:
            settle(session, desktop_id, TASK_OF[action], None)
            raise
    return _act(target, desktop_id, name, action, actor, timeout)


def power_desktop(session: Session, desktop_id: str, action: PowerAction, *, actor: str,
                  timeout: float | None = None) -> Desktop:
    """A power action asked for by a request (an API route, a web page) that holds `session`: what the request
    did so far is committed and its session slot given up (the node may take a while), then run_power_action.
    Returns the desktop as it is afterwards. Raises what run_power_action raises."""
    db.commit_and_give_up_slot(session)
    run_power_action(desktop_id, action, actor=actor, timeout=timeout)
    return db.get_or_404(session, Desktop, desktop_id, "desktop", populate_existing=True)


def ensure_running(desktop_id: str, *, actor: str, timeout: float = DEFAULT_START_TIMEOUT_S) -> None:
    """Return once the desktop is up: start it if it is down and idle, or wait for whoever is starting it.
    Raises DesktopStartTimeout (504) after `timeout` seconds, DesktopBusy if it is being stopped/reimaged and
    does not come back in time, and node errors from the start itself."""
    deadline = time.monotonic() + timeout
    while True:
        target = None
        with db.session_scope() as session:
            row = session.execute(select(Desktop.name, Desktop.power_state, Desktop.task_state)
                                  .where(Desktop.id == desktop_id)).first()
            if row is None:
                raise NotFound(kind="desktop", id=desktop_id)
            name, power_state, task_state = row
            if power_state == PowerState.UP and task_state is None:
                return
            if task_state is None:
                try:
                    desktop = claim(session, desktop_id, TaskState.STARTING, "start")
                except DesktopBusy:
                    # Another request (the same user's second connect, say) claimed it since the read: wait for it.
                    desktop = None
                if desktop is not None:
                    try:
                        target = nodes.target_of_desktop(session, desktop)
                    except VdiError:
                        settle(session, desktop_id, TaskState.STARTING, None)
                        raise
        if target is not None:
            state = _act(target, desktop_id, name, PowerAction.START, actor, None)
            if state == PowerState.UP:
                return
        if time.monotonic() >= deadline:
            raise DesktopStartTimeout(desktop=name, seconds=int(timeout))
        time.sleep(_POLL_S)
