"""The "directory.sync" job: one sync run (incremental, full once a day or on request), and the periodic
trigger that enqueues it."""
from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from core.enums import JobState
from core.errors import VdiError
from manager import db
from manager.identity.directory import Directory
from manager.identity.settings import get_directory_settings
from manager.identity.sync import record_sync_error, sync_directory
from manager.jobs import JobContext, OnCrash, enqueue, task
from manager.models import DirectorySyncState, Job, utcnow

JOB_KIND = "directory.sync"


@task(JOB_KIND, on_crash=OnCrash.RESUME)  # one transaction: a dead run left nothing
def directory_sync(ctx: JobContext, full: bool | None = None, actor: str = "system") -> dict[str, Any]:
    """Run one sync in its own transaction; a failure is remembered on the sync state and fails the job."""
    settings = get_directory_settings()
    directory = Directory(settings)
    try:
        with db.session_scope() as session:
            result = sync_directory(session, directory, full=full, actor=actor,
                                    progress=lambda done, total: ctx.progress(done, total))
            return result.summary()
    except VdiError as exc:
        with db.session_scope() as session:
            record_sync_error(session, settings.name, exc.message)
        raise


def enqueue_sync(session: Session, *, full: bool | None = None, actor: str = "system") -> Job:
    """Queue a sync unless one is already pending or running (then that job is returned)."""
    running = session.scalar(select(Job).where(Job.kind == JOB_KIND,
                                               Job.state.in_([JobState.PENDING, JobState.RUNNING]))
                             .order_by(Job.created_at.desc()).limit(1))
    if running is not None:
        return running
    mode = "full" if full else "incremental" if full is False else "scheduled"
    return enqueue(session, JOB_KIND, params={"full": full, "actor": actor},
                   description=f"{mode} directory sync", created_by=actor, target_kind="directory",
                   target_id=get_directory_settings().name)


def sync_if_due(session: Session) -> Job | None:
    """For a periodic loop: queue a sync when a directory is configured and the last run is older than
    VDI_AD_SYNC_INTERVAL_SECONDS. Returns the job queued (or already queued), None when not due."""
    settings = get_directory_settings()
    if not settings.configured:
        return None
    state = session.scalar(select(DirectorySyncState).where(DirectorySyncState.directory == settings.name))
    if state is not None and state.last_sync_at is not None and \
            (utcnow() - state.last_sync_at).total_seconds() < settings.sync_interval_seconds:
        return None
    return enqueue_sync(session, full=None)


def scheduled_sync() -> None:
    """One tick of the leader's "directory-sync" loop (manager/app.py): queue a sync when one is due."""
    with db.session_scope() as session:
        sync_if_due(session)


def scheduled_sync_period() -> float:
    """How often the loop asks whether a sync is due: a third of VDI_AD_SYNC_INTERVAL_SECONDS, at most 30 s, so a
    sync starts at most that late (and not at the very moment a manager starts or takes over)."""
    return min(get_directory_settings().sync_interval_seconds / 3, 30.0)
