"""One action on many desktops (the console's selected search results), as one job.

The job applies the action to each desktop through the same functions as the single actions (power.
run_power_action; a reset or a removal is claimed by service.claim_for_disk_action and done by tasks.reset_now /
tasks.deprovision_now), a few desktops at a time. A desktop that cannot be done (busy, assigned, its host
down) is a failure of that desktop, recorded in the job's result by name; the job goes on with the others.
"""
from __future__ import annotations

import concurrent.futures
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from broker import sessions
from core.enums import Severity, StrEnum
from core.errors import Invalid, VdiError
from event_manager.service import emit
from manager import db
from manager.jobs import JobContext, enqueue, task
from manager.models import Desktop, DesktopSession, Job
from manager.provisioning import service, tasks
from manager.provisioning.power import DEFAULT_STOP_TIMEOUT_S, PowerAction, run_power_action

log = logging.getLogger(__name__)

JOB_KIND = "desktops.bulk"
MAX_DESKTOPS = 1000
CONCURRENCY = 4  # desktops in flight at once: the node calls and disk work of a small machine
SHOWN = 20  # names a preview lists


class BulkAction(StrEnum):
    START = "start"
    STOP = "stop"
    POWEROFF = "poweroff"
    REBOOT = "reboot"
    RESET = "reset"
    DEPROVISION = "deprovision"


# The permission each action needs: the same as the single action's.
PERMISSION = {BulkAction.START: "desktops:power", BulkAction.STOP: "desktops:power",
              BulkAction.POWEROFF: "desktops:power", BulkAction.REBOOT: "desktops:power",
              BulkAction.RESET: "desktops:write", BulkAction.DEPROVISION: "desktops:write"}


def _check(desktop_ids: Sequence[str]) -> list[str]:
    """The ids in their order, each once. Invalid when there are none or more than MAX_DESKTOPS."""
    ids = list(dict.fromkeys(desktop_ids))
    if not 1 <= len(ids) <= MAX_DESKTOPS:
        raise Invalid(f"desktop_ids: give 1 to {MAX_DESKTOPS} desktops ({len(ids)} given)")
    return ids


def _refuse_unknown(ids: Sequence[str], found: set[str]) -> None:
    unknown = [i for i in ids if i not in found]
    if unknown:
        more = f" and {len(unknown) - SHOWN} more" if len(unknown) > SHOWN else ""
        raise Invalid(f"desktop_ids: no desktop has the id {', '.join(unknown[:SHOWN])}{more}")


@dataclass(frozen=True)
class Preview:
    """What a confirmation must say before the action: how many desktops, which (the first SHOWN names), how
    many have a user (a live console session or an assigned user), how many are busy with another action."""

    action: BulkAction
    count: int
    names: list[str]
    in_use: int
    in_use_names: list[str]
    busy: int


def preview(session: Session, action: BulkAction, desktop_ids: Sequence[str]) -> Preview:
    """One query. Invalid for unknown ids (naming them) or a count outside 1..MAX_DESKTOPS."""
    action = BulkAction(action)
    ids = _check(desktop_ids)
    live = select(DesktopSession.id).where(DesktopSession.desktop_id == Desktop.id,
                                           DesktopSession.state.in_(sessions.LIVE)).exists()
    rows = session.execute(select(Desktop.id, Desktop.name, or_(Desktop.assigned_user_id.is_not(None), live),
                                  Desktop.task_state.is_not(None))
                           .where(Desktop.id.in_(ids)).order_by(Desktop.name)).all()
    _refuse_unknown(ids, {r[0] for r in rows})
    in_use = [name for _id, name, used, _busy in rows if used]
    return Preview(action, len(rows), [r[1] for r in rows[:SHOWN]], len(in_use), in_use[:SHOWN],
                   sum(1 for r in rows if r[3]))


def request_bulk(session: Session, action: BulkAction, desktop_ids: Sequence[str], *, actor: str) -> Job:
    """Enqueue the job applying `action` to the desktops (sent when the caller's transaction commits).
    Invalid for unknown ids (naming them) or a count outside 1..MAX_DESKTOPS. The caller checks the permission
    (PERMISSION[action])."""
    action = BulkAction(action)
    ids = _check(desktop_ids)
    _refuse_unknown(ids, set(session.scalars(select(Desktop.id).where(Desktop.id.in_(ids)))))
    return enqueue(session, JOB_KIND, params={"action": action.value, "desktop_ids": ids, "actor": actor},
                   created_by=actor, target_kind="desktop", total=len(ids),
                   description=f"{action.value} {len(ids)} desktop(s)")


def apply(action: BulkAction, desktop_id: str, *, actor: str, job_id: str | None = None) -> None:
    """The action on one desktop, as the single action does it (in its own short transactions). Raises the
    single action's errors: DesktopBusy, Conflict (assigned), NotFound, node errors."""
    if action in (BulkAction.RESET, BulkAction.DEPROVISION):
        with db.session_scope() as session:
            service.claim_for_disk_action(session, desktop_id, action.value)
        if action == BulkAction.RESET:
            tasks.reset_now(desktop_id, job_id=job_id)
        else:
            tasks.deprovision_now(desktop_id, job_id=job_id)
        return
    power = PowerAction(action.value)
    run_power_action(desktop_id, power, actor=actor,
                     timeout=DEFAULT_STOP_TIMEOUT_S if power == PowerAction.STOP else None)


def _attempt(action: BulkAction, desktop_id: str, actor: str, job_id: str) -> str | None:
    """None when done, else why not."""
    try:
        apply(action, desktop_id, actor=actor, job_id=job_id)
        return None
    except VdiError as exc:
        return exc.message
    except Exception as exc:  # a bug on one desktop must not hide what happened to the others
        log.exception("bulk %s of desktop %s failed", action.value, desktop_id)
        return f"{type(exc).__name__}: {exc}"


@task(JOB_KIND)
def run_bulk(ctx: JobContext, action: str, desktop_ids: list[str], actor: str = "system") -> dict[str, Any]:
    """Apply the action to every desktop, CONCURRENCY at a time, reporting done/total. A cancel stops the
    sending of further desktops; those in flight finish."""
    verb = BulkAction(action)
    with db.session_scope() as session:
        names = dict(session.execute(select(Desktop.id, Desktop.name).where(Desktop.id.in_(desktop_ids))).all())
    total, done = len(desktop_ids), 0
    failed: dict[str, str] = {}
    ctx.progress(0, total, force=True)
    todo = iter(desktop_ids)
    in_flight: dict[concurrent.futures.Future, str] = {}
    with concurrent.futures.ThreadPoolExecutor(CONCURRENCY, thread_name_prefix="vdi-bulk") as pool:
        while True:
            while len(in_flight) < CONCURRENCY and (desktop_id := next(todo, None)) is not None:
                ctx.check_cancelled()  # JobCancelled: leaving the pool waits for the desktops in flight
                in_flight[pool.submit(_attempt, verb, desktop_id, actor, ctx.job_id)] = desktop_id
            if not in_flight:
                break
            finished, _ = concurrent.futures.wait(in_flight, return_when=concurrent.futures.FIRST_COMPLETED)
            for future in finished:
                desktop_id = in_flight.pop(future)
                reason = future.result()
                if reason is not None:
                    failed[names.get(desktop_id, desktop_id)] = reason
                done += 1
            ctx.progress(done, total)
    with db.session_scope() as session:
        emit(session, "desktops.bulk_done", f"{actor}'s {verb.value} of {total} desktop(s): {total - len(failed)} "
             f"done" + (f", {len(failed)} failed" if failed else ""),
             severity=Severity.WARNING if failed else Severity.NORMAL, actor=actor, job_id=ctx.job_id)
    return {"action": verb.value, "total": total, "succeeded": total - len(failed), "failed": failed}
