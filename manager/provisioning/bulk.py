"""One action on many desktops (the console's selected search results), as one job.

The job applies the action to each desktop through the same functions as the single actions (power.
run_power_action; a reset or a removal is claimed by service.claim_for_disk_action and done by tasks.reset_now /
tasks.deprovision_now; a re-image, a snapshot or a revert is asked for through image_manager.service as the single
routes ask, and the disk job that answers is run to its end within this one; an assignment goes through
pools.assign_pool_desktop / service.attach_user, an unassignment through pools.unassign_pool_desktop /
service.detach_user), a few desktops at a time. A desktop that cannot be done (busy, assigned, its host down, no
snapshot to revert to, not in a manual pool...) is a failure of that desktop, recorded in the job's result by
name; the job goes on with the others.
"""
from __future__ import annotations

import concurrent.futures
import logging
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from sqlalchemy import func, or_, select
from sqlalchemy.orm import Session

from broker import sessions
from core.enums import JobState, Severity, StrEnum
from core.errors import Conflict, Invalid, VdiError
from event_manager.service import emit
from manager import db
from manager.jobs import JobContext, OnCrash, enqueue, run_job, task
from manager.models import Assignment, Desktop, DesktopSession, Job, Snapshot, User
from manager.provisioning import pools, service, tasks
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
    REIMAGE = "reimage"
    SNAPSHOT = "snapshot"
    REVERT = "revert"
    ASSIGN = "assign"
    UNASSIGN = "unassign"


# The permissions each action needs: the single action's. An assignment is a pool's (pools:write) or a desktop's
# attachment (entitlements:write) depending on the desktop, so a bulk one needs both.
PERMISSIONS: dict[BulkAction, tuple[str, ...]] = {
    BulkAction.START: ("desktops:power",), BulkAction.STOP: ("desktops:power",),
    BulkAction.POWEROFF: ("desktops:power",), BulkAction.REBOOT: ("desktops:power",),
    BulkAction.RESET: ("desktops:write",), BulkAction.DEPROVISION: ("desktops:write",),
    BulkAction.REIMAGE: ("desktops:write",), BulkAction.SNAPSHOT: ("desktops:write",),
    BulkAction.REVERT: ("desktops:write",),
    BulkAction.ASSIGN: ("pools:write", "entitlements:write"),
    BulkAction.UNASSIGN: ("pools:write", "entitlements:write")}


@dataclass(frozen=True)
class Options:
    """What some actions need besides the desktops. reimage: template_version_id (default: each desktop's
    template's latest version), keep_snapshots, power_off; snapshot: snapshot_name (and description); revert:
    snapshot_name (default: each desktop's newest snapshot); assign: user_id."""

    template_version_id: str | None = None
    keep_snapshots: bool = False
    power_off: bool = False
    snapshot_name: str | None = None
    description: str = ""
    user_id: str | None = None


# Which options each action takes (anything else given is refused, not ignored).
TAKES: dict[BulkAction, frozenset[str]] = {
    BulkAction.REIMAGE: frozenset({"template_version_id", "keep_snapshots", "power_off"}),
    BulkAction.SNAPSHOT: frozenset({"snapshot_name", "description"}),
    BulkAction.REVERT: frozenset({"snapshot_name"}),
    BulkAction.ASSIGN: frozenset({"user_id"})}
NEEDS: dict[BulkAction, frozenset[str]] = {BulkAction.SNAPSHOT: frozenset({"snapshot_name"}),
                                           BulkAction.ASSIGN: frozenset({"user_id"})}


def check_options(session: Session, action: BulkAction, options: Options) -> Options:
    """Invalid, naming the field, for an option the action does not take, a missing one it needs, an unknown
    user or template version."""
    given = {name for name, value in asdict(options).items() if value not in (None, False, "")}
    extra = sorted(given - TAKES.get(action, frozenset()))
    if extra:
        raise Invalid(f"{', '.join(extra)}: {action.value} takes no {' or '.join(extra)}")
    missing = sorted(NEEDS.get(action, frozenset()) - given)
    if missing:
        raise Invalid(f"{', '.join(missing)}: {action.value} needs {' and '.join(missing)}")
    if options.user_id is not None and session.get(User, options.user_id) is None:
        raise Invalid(f"user_id: user {options.user_id} does not exist")
    if options.template_version_id is not None:
        from image_manager import service as images

        images.version_by_id(session, options.template_version_id)
    return options


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
    many have a user (a live console session or an assigned user), how many are busy with another action; how many
    have a user logged in now (a live console session or a user the guest agent reports), and for a revert how
    many have no snapshot to revert to (of the name given)."""

    action: BulkAction
    count: int
    names: list[str]
    in_use: int
    in_use_names: list[str]
    busy: int
    logged_in: int = 0
    without_snapshot: int = 0


def preview(session: Session, action: BulkAction, desktop_ids: Sequence[str],
            options: Options | None = None) -> Preview:
    """One query. Invalid for unknown ids (naming them) or a count outside 1..MAX_DESKTOPS."""
    action = BulkAction(action)
    options = options or Options()
    ids = _check(desktop_ids)
    live = select(DesktopSession.id).where(DesktopSession.desktop_id == Desktop.id,
                                           DesktopSession.state.in_(sessions.LIVE)).exists()
    snaps = select(Snapshot.id).where(Snapshot.desktop_id == Desktop.id)
    if options.snapshot_name is not None:
        snaps = snaps.where(Snapshot.name == options.snapshot_name)
    rows = session.execute(select(Desktop.id, Desktop.name, or_(Desktop.assigned_user_id.is_not(None), live),
                                  Desktop.task_state.is_not(None), or_(live, func.coalesce(Desktop.logged_in_user, "")
                                                                       != ""), snaps.exists())
                           .where(Desktop.id.in_(ids)).order_by(Desktop.name)).all()
    _refuse_unknown(ids, {r[0] for r in rows})
    in_use = [r[1] for r in rows if r[2]]
    return Preview(action, len(rows), [r[1] for r in rows[:SHOWN]], len(in_use), in_use[:SHOWN],
                   sum(1 for r in rows if r[3]), logged_in=sum(1 for r in rows if r[4]),
                   without_snapshot=sum(1 for r in rows if not r[5]) if action == BulkAction.REVERT else 0)


def request_bulk(session: Session, action: BulkAction, desktop_ids: Sequence[str], *, actor: str,
                 options: Options | None = None) -> Job:
    """Enqueue the job applying `action` to the desktops (sent when the caller's transaction commits).
    Invalid for unknown ids (naming them), a count outside 1..MAX_DESKTOPS or options that do not fit the action
    (check_options). The caller checks the permissions (PERMISSIONS[action])."""
    action = BulkAction(action)
    options = check_options(session, action, options or Options())
    ids = _check(desktop_ids)
    _refuse_unknown(ids, set(session.scalars(select(Desktop.id).where(Desktop.id.in_(ids)))))
    params: dict[str, Any] = {"action": action.value, "desktop_ids": ids, "actor": actor}
    if options != Options():
        params["options"] = asdict(options)
    what = f" ({options.snapshot_name})" if options.snapshot_name else ""
    return enqueue(session, JOB_KIND, params=params, created_by=actor, target_kind="desktop", total=len(ids),
                   description=f"{action.value}{what} {len(ids)} desktop(s)")


FINISHED = (JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED)


def _run_to_end(job_id: str) -> None:
    """Run a committed job that a single action's service function enqueued (its runner may already have taken
    it: run_job claims a job once) and wait for its end. Raises VdiError with the job's error when it failed."""
    run_job(job_id)
    while True:
        with db.session_scope() as session:
            job = session.get(Job, job_id)
            state, error = (job.state, job.error) if job is not None else (JobState.FAILED, "its job vanished")
        if state in FINISHED:
            break
        time.sleep(0.2)
    if state != JobState.SUCCEEDED:
        raise VdiError(error or f"its job was {state.value}")


def _disk_job(action: BulkAction, session: Session, desktop_id: str, options: Options, actor: str) -> Job:
    """Ask for the desktop's re-image, snapshot or revert as the single route does."""
    from image_manager import service as images

    desktop = images.get_desktop(session, desktop_id)
    if action == BulkAction.REIMAGE:
        return images.reimage_desktop(session, desktop, version=images.reimage_target(
            session, desktop, options.template_version_id), keep_snapshots=options.keep_snapshots,
            power_off=options.power_off, actor=actor)
    if action == BulkAction.SNAPSHOT:
        return images.create_snapshot(session, desktop, options.snapshot_name or "",
                                      description=options.description, actor=actor)[1]
    return images.revert_to_snapshot(session, desktop, images.snapshot_named(session, desktop, options.snapshot_name),
                                     actor=actor)


def _assignment(action: BulkAction, session: Session, desktop_id: str, options: Options, actor: str) -> None:
    """A pool desktop through its pool (assign: manual pools only, within the per-user limit; unassign: back
    from its user, then reset), a desktop outside pools by attaching the user / detaching all its users."""
    desktop = service.get_desktop(session, desktop_id)
    if desktop.pool_id is not None:
        if action == BulkAction.ASSIGN:
            pools.assign_pool_desktop(session, desktop.pool_id, desktop_id, options.user_id or "", actor=actor)
        else:
            pools.unassign_pool_desktop(session, desktop.pool_id, desktop_id, actor=actor)
        return
    if action == BulkAction.ASSIGN:
        service.attach_user(session, desktop_id, options.user_id or "", actor=actor)
        return
    users = list(session.scalars(select(Assignment.user_id).where(Assignment.desktop_id == desktop_id)))
    if not users:
        raise Conflict(f"desktop {desktop.name} has no users attached")
    for user_id in users:
        service.detach_user(session, desktop_id, user_id, actor=actor)


def apply(action: BulkAction, desktop_id: str, *, actor: str, job_id: str | None = None,
          options: Options | None = None) -> None:
    """The action on one desktop, as the single action does it (in its own short transactions). Raises the
    single action's errors: DesktopBusy, Conflict (assigned), NotFound, node errors."""
    options = options or Options()
    if action in (BulkAction.REIMAGE, BulkAction.SNAPSHOT, BulkAction.REVERT):
        with db.session_scope() as session:
            disk_job_id = _disk_job(action, session, desktop_id, options, actor).id
        _run_to_end(disk_job_id)
        return
    if action in (BulkAction.ASSIGN, BulkAction.UNASSIGN):
        with db.session_scope() as session:
            _assignment(action, session, desktop_id, options, actor)
        return
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


def _attempt(action: BulkAction, desktop_id: str, actor: str, job_id: str, options: Options) -> str | None:
    """None when done, else why not."""
    try:
        apply(action, desktop_id, actor=actor, job_id=job_id, options=options)
        return None
    except VdiError as exc:
        return exc.message
    except Exception as exc:  # a bug on one desktop must not hide what happened to the others
        log.exception("bulk %s of desktop %s failed", action.value, desktop_id)
        return f"{type(exc).__name__}: {exc}"


@task(JOB_KIND, on_crash=OnCrash.FAIL)  # not all actions are idempotent: the user retries
def run_bulk(ctx: JobContext, action: str, desktop_ids: list[str], actor: str = "system",
             options: dict[str, Any] | None = None) -> dict[str, Any]:
    """Apply the action to every desktop, CONCURRENCY at a time, reporting done/total. A cancel stops the
    sending of further desktops; those in flight finish."""
    verb = BulkAction(action)
    opts = Options(**(options or {}))
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
                in_flight[pool.submit(_attempt, verb, desktop_id, actor, ctx.job_id, opts)] = desktop_id
            if not in_flight:
                break
            finished, _ = concurrent.futures.wait(in_flight, return_when=concurrent.futures.FIRST_COMPLETED)
            for future in finished:
                desktop_id = in_flight.pop(future)
                reason = future.result()
                if reason is not None:
                    failed[names.get(desktop_id, desktop_id)] = reason
                done += 1
            ctx.completed.update(done=done, failed=dict(failed))
            ctx.progress(done, total)
    with db.session_scope() as session:
        emit(session, "desktops.bulk_done", f"{actor}'s {verb.value} of {total} desktop(s): {total - len(failed)} "
             f"done" + (f", {len(failed)} failed" if failed else ""),
             severity=Severity.WARNING if failed else Severity.NORMAL, actor=actor, job_id=ctx.job_id)
    return {"action": verb.value, "total": total, "succeeded": total - len(failed), "failed": failed}
