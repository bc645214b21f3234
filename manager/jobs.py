"""Long work as jobs users can watch.

- A job is a row (kind, state, progress, done/total). `enqueue()` adds it to the caller's transaction and sends
  it only AFTER that transaction commits (dropped on rollback); only the id travels.
- Task functions are registered once with `@task("kind")` and run the same way by either runner:
  Celery workers over Redis (`VDI_REDIS_URL` set; `vdi worker`), or, in the embedded default, an in-process
  thread pool, which needs no broker server.
- Tasks are thin and idempotent, check the world before acting, and report progress through `JobContext`,
  which also raises `JobCancelled` when a user asked to cancel.
"""
from __future__ import annotations

import concurrent.futures
import importlib
import logging
import threading
import time
import traceback
from collections.abc import Callable
from typing import Any

from sqlalchemy import update
from sqlalchemy.orm import Session

from core.enums import JobState, Severity
from core.errors import VdiError
from manager import db, logs
from manager.models import Job, utcnow

log = logging.getLogger(__name__)

# Every module whose import registers tasks. Any runner (a Celery worker, the in-process pool) imports them
# all before taking work, so a job kind is known wherever it runs.
TASK_MODULES = [
    "manager.storage_tasks",
    "manager.node_reconcile",
    "manager.identity.sync_tasks",
    "manager.provisioning.tasks",
    "manager.provisioning.bulk",
    "manager.provisioning.migration",
    "policy_engine.tasks",
    "image_manager.tasks",
]

TaskFn = Callable[..., dict[str, Any] | None]
_TASKS: dict[str, TaskFn] = {}


def task(kind: str) -> Callable[[TaskFn], TaskFn]:
    def register(fn: TaskFn) -> TaskFn:
        _TASKS[kind] = fn
        return fn

    return register


def load_task_modules() -> None:
    for name in TASK_MODULES:
        importlib.import_module(name)


class JobCancelled(Exception):
    pass


class JobContext:
    """Handed to a task: progress reporting in short transactions of its own, and cancellation checks."""

    def __init__(self, job_id: str, min_interval: float = 0.2) -> None:
        self.job_id = job_id
        self._last_write = 0.0
        self._min_interval = min_interval

    def progress(self, done: int, total: int | None = None, *, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last_write < self._min_interval and (total is None or done < total):
            return
        self._last_write = now
        values: dict[str, Any] = {"done": done, "heartbeat_at": utcnow()}
        if total is not None:
            values["total"] = total
        with db.session_scope() as session:
            job = session.get(Job, self.job_id)
            if job is None:
                raise JobCancelled("job row vanished")
            total_now = values.get("total", job.total)
            values["progress"] = round(100.0 * done / total_now, 2) if total_now else 0.0
            session.execute(update(Job).where(Job.id == self.job_id).values(**values))
            if job.cancel_requested:
                raise JobCancelled(f"job {self.job_id} was cancelled")

    def check_cancelled(self) -> None:
        with db.session_scope() as session:
            job = session.get(Job, self.job_id)
            if job is None or job.cancel_requested:
                raise JobCancelled(f"job {self.job_id} was cancelled")


# ---- sending -----------------------------------------------------------------------------------------
_executor: concurrent.futures.ThreadPoolExecutor | None = None
_executor_lock = threading.Lock()
_celery_app = None


def _settings():
    from manager.config import get_settings

    return get_settings()


def celery_app():
    """The Celery application (created on first use, pointed at VDI_REDIS_URL)."""
    global _celery_app
    if _celery_app is None:
        from celery import Celery

        url = _settings().redis_url
        app = Celery("vdi", broker=url, backend=None)
        app.conf.update(task_acks_late=True, task_reject_on_worker_lost=True, worker_prefetch_multiplier=1,
                        task_ignore_result=True, broker_connection_retry_on_startup=True,
                        worker_hijack_root_logger=False)

        @app.task(name="vdi.run_job")
        def _run_job_task(job_id: str) -> None:
            run_job(job_id)

        _celery_app = app
    return _celery_app


def _in_process_executor() -> concurrent.futures.ThreadPoolExecutor:
    global _executor
    with _executor_lock:
        if _executor is None:
            _executor = concurrent.futures.ThreadPoolExecutor(max_workers=4, thread_name_prefix="vdi-job")
        return _executor


def dispatch(job_id: str) -> None:
    """Hand a committed job to a runner."""
    if _settings().embedded_jobs:
        _in_process_executor().submit(run_job, job_id)
    else:
        celery_app().send_task("vdi.run_job", args=[job_id])


def enqueue(session: Session, kind: str, *, params: dict[str, Any] | None = None, description: str = "",
            created_by: str = "system", target_kind: str = "", target_id: str = "", total: int = 0,
            correlation_id: str = "") -> Job:
    """Create a job row in the caller's transaction; it is dispatched after that transaction commits. Its
    correlation id is, unless given, the one of the request (or job) that queues it (manager/logs.py)."""
    if kind not in _TASKS:
        load_task_modules()
    if kind not in _TASKS:
        raise ValueError(f"unknown job kind {kind!r}")
    job = Job(kind=kind, params=params or {}, description=description or kind, created_by=created_by,
              target_kind=target_kind, target_id=target_id, total=total,
              correlation_id=correlation_id or logs.correlation_id.get())
    session.add(job)
    session.flush()
    job_id = job.id
    db.after_commit(session, lambda: dispatch(job_id))
    return job


# ---- running -------------------------------------------------------------------------------------------
def run_job(job_id: str) -> None:
    """Run one job to its end. Safe to call twice: only a PENDING job is claimed (compare-and-swap)."""
    load_task_modules()
    with db.session_scope() as session:
        claimed = session.execute(
            update(Job).where(Job.id == job_id, Job.state == JobState.PENDING)
            .values(state=JobState.RUNNING, started_at=utcnow(), heartbeat_at=utcnow())).rowcount
        job = session.get(Job, job_id)
        if not claimed or job is None:
            return
        if job.cancel_requested:
            job.state, job.finished_at = JobState.CANCELLED, utcnow()
            return
        kind, params, actor = job.kind, dict(job.params or {}), job.created_by
        correlation = job.correlation_id or job_id
    # its log records (and the jobs it queues) carry the correlation id of the request that queued it
    token = logs.correlation_id.set(correlation)
    try:
        _run_claimed(job_id, kind, params, actor)
    finally:
        logs.correlation_id.reset(token)


def _run_claimed(job_id: str, kind: str, params: dict[str, Any], actor: str) -> None:
    from event_manager.service import emit

    fn = _TASKS.get(kind)
    ctx = JobContext(job_id)
    state, error, result = JobState.SUCCEEDED, "", {}
    try:
        if fn is None:
            raise VdiError(f"this worker does not know job kind {kind!r}")
        result = fn(ctx, **params) or {}
    except JobCancelled:
        state, error = JobState.CANCELLED, "cancelled by request"
    except VdiError as exc:
        state, error = JobState.FAILED, exc.message
    except Exception as exc:  # a task bug: record it on the job, keep the worker alive
        state, error = JobState.FAILED, f"{type(exc).__name__}: {exc}"
        log.error("job %s (%s) crashed:\n%s", job_id, kind, traceback.format_exc())
    with db.session_scope() as session:
        job = session.get(Job, job_id)
        if job is None:
            return
        job.state, job.error, job.result, job.finished_at = state, error, result, utcnow()
        if state == JobState.SUCCEEDED:
            job.progress = 100.0
            if job.total:
                job.done = job.total
        severity = Severity.NORMAL if state == JobState.SUCCEEDED else Severity.WARNING \
            if state == JobState.CANCELLED else Severity.ERROR
        emit(session, f"job.{state.value}", f"job {kind} {state.value}" + (f": {error}" if error else ""),
             severity=severity, actor=actor, job_id=job_id, correlation_id=logs.correlation_id.get())


def request_cancel(session: Session, job: Job) -> None:
    job.cancel_requested = True
    if job.state == JobState.PENDING:
        job.state, job.finished_at = JobState.CANCELLED, utcnow()


def eta_seconds(job: Job) -> float | None:
    """Remaining time estimated from the rate so far; None until there is a rate."""
    if job.state != JobState.RUNNING or not job.started_at or not job.total or job.done <= 0:
        return None
    elapsed = (utcnow() - job.started_at).total_seconds()
    return round(elapsed / job.done * (job.total - job.done), 1)
