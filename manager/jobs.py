"""Long work as jobs users can watch.

- A job is a row (kind, state, progress, done/total). `enqueue()` adds it to the caller's transaction and sends
  it only AFTER that transaction commits (dropped on rollback); only the id travels.
- Task functions are registered once with `@task("kind")` and run the same way by either runner:
  Celery workers over Redis (`VDI_REDIS_URL` set; `vdi worker`), or, in the embedded default, an in-process
  thread pool, which needs no broker server.
- Tasks are thin and idempotent, check the world before acting, and report progress through `JobContext`,
  which also raises `JobCancelled` when a user asked to cancel (`check_cancelled()` between steps; a cancelled
  job ends CANCELLED with what it completed: `ctx.completed`).
- Every kind says what happens when the process running it dies (`@task(kind, on_crash=...)`): RESUME (its steps
  are idempotent: it is sent again with the same id and finishes the work) or FAIL (with a reason naming the dead
  runner, after its `recover` hook undid the partial work). A running job is owned by one runner (`Job.owner`,
  a manager's in-process pool or a Celery worker process), which renews the job's lease (`heartbeat_at`, on the
  database's clock) every VDI_JOB_LEASE_SECONDS/3 from a thread of its own; `recover_orphaned_jobs()` (the leader's
  "job-recovery" loop, and every `vdi worker`) settles only jobs whose lease ran out, each once (compare-and-swap),
  so one manager never takes another live manager's in-process jobs for dead.
"""
from __future__ import annotations

import concurrent.futures
import datetime as dt
import enum
import importlib
import logging
import os
import socket
import threading
import time
import traceback
from collections.abc import Callable
from typing import Any

from dataclasses import dataclass, field

from sqlalchemy import func, select, update
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
# recover(session, params, reason=..., job_id=...) -> what it cleaned: undoes a dead FAIL job's partial work
RecoverFn = Callable[..., list[str] | None]


class OnCrash(enum.Enum):
    """What becomes of a job whose runner died mid-job."""
    RESUME = "resume"  # sent again with the same id: its steps are idempotent and finish the work
    FAIL = "fail"  # failed with a reason (after its `recover` hook undid its partial work); the user retries


@dataclass(frozen=True)
class Kind:
    fn: TaskFn
    on_crash: OnCrash | None
    recover: RecoverFn | None = None


_TASKS: dict[str, Kind] = {}


def task(kind: str, *, on_crash: OnCrash | None = None, recover: RecoverFn | None = None
         ) -> Callable[[TaskFn], TaskFn]:
    """Register a job kind. `on_crash` is what recovery does with one left RUNNING by a dead runner; a kind that
    does not say is failed (tests/unit/test_job_kinds.py requires every kind to say)."""
    def register(fn: TaskFn) -> TaskFn:
        _TASKS[kind] = Kind(fn, on_crash, recover)
        return fn

    return register


def kinds() -> dict[str, Kind]:
    """Every registered job kind (all task modules loaded)."""
    load_task_modules()
    return dict(_TASKS)


def load_task_modules() -> None:
    for name in TASK_MODULES:
        importlib.import_module(name)


class JobCancelled(Exception):
    pass


class JobLost(JobCancelled):
    """The job is no longer this runner's (recovery took it after its lease ran out): stop, write nothing more."""


class JobContext:
    """Handed to a task: progress reporting in short transactions of its own, and cancellation checks."""

    def __init__(self, job_id: str, min_interval: float = 0.2) -> None:
        self.job_id = job_id
        self._last_write = 0.0
        self._min_interval = min_interval
        self.completed: dict[str, Any] = {}  # what the task has done so far: the result of a cancelled job

    def progress(self, done: int, total: int | None = None, *, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last_write < self._min_interval and (total is None or done < total):
            return
        self._last_write = now
        values: dict[str, Any] = {"done": done}
        if total is not None:
            values["total"] = total
        with db.session_scope() as session:
            job = self._own(session)
            total_now = values.get("total", job.total)
            values["progress"] = round(100.0 * done / total_now, 2) if total_now else 0.0
            session.execute(update(Job).where(Job.id == self.job_id).values(**values))
            cancelled = job.cancel_requested
        if cancelled:  # after the commit: the progress reached so far is what the cancelled job completed
            raise JobCancelled(f"job {self.job_id} was cancelled")

    def check_cancelled(self) -> None:
        """Raise JobCancelled when a user asked to cancel; call it between steps (progress() checks only when it
        writes, at most every `min_interval`)."""
        with db.session_scope() as session:
            if self._own(session).cancel_requested:
                raise JobCancelled(f"job {self.job_id} was cancelled")

    def _own(self, session: Session) -> Job:
        """The job's row, still this runner's: when its lease ran out (the database was away) and recovery gave it
        to another runner, or settled it, this run stops at its next step (JobLost) rather than work twice."""
        job = session.get(Job, self.job_id)
        if job is None:
            raise JobLost(f"job {self.job_id}: its row vanished")
        if job.state != JobState.RUNNING or job.owner != runner_id():
            raise JobLost(f"job {self.job_id} is no longer this runner's ({job.state.value}, "
                          f"{job.owner or 'no owner'})")
        return job


# ---- leases: a running job is owned by the process running it ------------------------------------------------
def _lease_seconds() -> float:
    return _settings().job_lease_seconds


_runner: tuple[int, str] | None = None


def runner_id() -> str:
    """This process as a job owner: the manager instance running jobs in-process, or a worker process (fixed for
    the life of the process, whatever its settings become)."""
    global _runner
    if _runner is None or _runner[0] != os.getpid():
        settings = _settings()
        name = f"manager {settings.effective_instance_id}" if settings.embedded_jobs else \
            f"worker {socket.gethostname()} pid {os.getpid()}"
        _runner = (os.getpid(), name)
    return _runner[1]


class _Leases:
    """The jobs this process runs, and the thread renewing their leases while they run."""

    def __init__(self) -> None:
        self._ids: set[str] = set()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._pid = 0

    def hold(self, job_id: str) -> None:
        with self._lock:
            self._ids.add(job_id)
            if self._thread is None or not self._thread.is_alive() or self._pid != os.getpid():
                self._pid = os.getpid()
                self._thread = threading.Thread(target=self._run, name="vdi-job-leases", daemon=True)
                self._thread.start()

    def release(self, job_id: str) -> None:
        with self._lock:
            self._ids.discard(job_id)

    def _run(self) -> None:
        while True:
            time.sleep(_lease_seconds() / 3)
            with self._lock:
                ids = list(self._ids)
            if not ids:
                continue
            try:
                with db.session_scope() as session:
                    session.execute(update(Job).where(Job.id.in_(ids), Job.state == JobState.RUNNING,
                                                      Job.owner == runner_id()).values(heartbeat_at=db.clock(session)))
            except Exception:  # the database is away: try again next period (the lease may run out meanwhile)
                log.warning("renewing the leases of jobs %s failed", ids, exc_info=True)


_leases = _Leases()


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
        now = db.clock(session)
        claimed = session.execute(
            update(Job).where(Job.id == job_id, Job.state == JobState.PENDING)
            .values(state=JobState.RUNNING, started_at=now, heartbeat_at=now, owner=runner_id())).rowcount
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
    _leases.hold(job_id)
    try:
        _run_claimed(job_id, kind, params, actor)
    finally:
        _leases.release(job_id)
        logs.correlation_id.reset(token)


def _run_claimed(job_id: str, kind: str, params: dict[str, Any], actor: str) -> None:
    from event_manager.service import emit

    registered = _TASKS.get(kind)
    ctx = JobContext(job_id)
    state, error, result = JobState.SUCCEEDED, "", {}
    try:
        if registered is None:
            raise VdiError(f"this worker does not know job kind {kind!r}")
        result = registered.fn(ctx, **params) or {}
    except JobCancelled:
        state, error, result = JobState.CANCELLED, "cancelled by request", dict(ctx.completed)
    except VdiError as exc:
        state, error = JobState.FAILED, exc.message
    except Exception as exc:  # a task bug: record it on the job, keep the worker alive
        state, error = JobState.FAILED, f"{type(exc).__name__}: {exc}"
        log.error("job %s (%s) crashed:\n%s", job_id, kind, traceback.format_exc())
    with db.session_scope() as session:
        job = session.get(Job, job_id, with_for_update=True)
        if job is None:
            return
        if job.state != JobState.RUNNING or job.owner != runner_id():
            # its lease ran out meanwhile (the database was away) and recovery settled it: that outcome stands
            log.warning("job %s (%s) ended %s here, but recovery had already made it %s", job_id, kind,
                        state.value, job.state.value)
            return
        job.state, job.error, job.result, job.finished_at = state, error, result, utcnow()
        if state == JobState.SUCCEEDED:
            job.progress = 100.0
            if job.total:
                job.done = job.total
        elif state == JobState.CANCELLED and job.total:
            error = job.error = f"cancelled by request after {job.done} of {job.total} step(s)"
        severity = Severity.NORMAL if state == JobState.SUCCEEDED else Severity.WARNING \
            if state == JobState.CANCELLED else Severity.ERROR
        emit(session, f"job.{state.value}", f"job {kind} {state.value}" + (f": {error}" if error else ""),
             severity=severity, actor=actor, job_id=job_id, correlation_id=logs.correlation_id.get())


# ---- recovery: jobs whose runner died ---------------------------------------------------------------------------
@dataclass
class Recovery:
    resumed: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    cleaned: dict[str, list[str]] = field(default_factory=dict)  # job id -> what its recover hook undid
    resent: list[str] = field(default_factory=list)  # PENDING jobs sent again


def _last_sign_of_life():
    """A running job's last lease renewal (rows from before leases: when it started, or was created)."""
    return func.coalesce(Job.heartbeat_at, Job.started_at, Job.created_at)


def recover_orphaned_jobs(*, dead_after: float | None = None, kind_prefix: str = "",
                          exclude: str | None = None) -> Recovery:
    """Settle the RUNNING jobs whose lease ran out (no renewal for `dead_after` s, by default
    VDI_JOB_LEASE_SECONDS): each kind's OnCrash says resume (PENDING again, sent after the commit) or fail (with
    the reason, after its recover hook). Each job is taken by one compare-and-swap on (state, lease), so several
    managers and workers may run this at once and a job is settled once; a job whose owner still renews is left
    alone whoever runs this."""
    from event_manager.service import emit

    load_task_modules()
    report = Recovery()
    ttl = _lease_seconds() if dead_after is None else dead_after
    with db.session_scope() as session:
        now = db.clock(session)  # a resumed job's heartbeat_at is when it was sent again (see _resend_stale_pending)
        cutoff = now - dt.timedelta(seconds=ttl)
        stmt = select(Job.id).where(Job.state == JobState.RUNNING,
                                    _last_sign_of_life() <= cutoff)
        if kind_prefix:
            stmt = stmt.where(Job.kind.startswith(kind_prefix))
        candidates = [job_id for job_id in session.scalars(stmt) if job_id != exclude]
    for job_id in candidates:
        with db.session_scope() as session:
            job = session.get(Job, job_id)
            if job is None:
                continue
            registered = _TASKS.get(job.kind)
            resume = registered is not None and registered.on_crash == OnCrash.RESUME
            lost = f"{job.owner or 'the process running it'} stopped (no lease renewal since " \
                   f"{(job.heartbeat_at or job.started_at or cutoff):%Y-%m-%d %H:%M:%S} UTC)"
            values: dict[str, Any] = dict(state=JobState.PENDING, started_at=None, heartbeat_at=now, owner="") \
                if resume else dict(state=JobState.FAILED, finished_at=utcnow(),
                                    error=f"interrupted: {lost} while it ran; its partial work was undone, retry it")
            taken = session.execute(update(Job).where(
                Job.id == job_id, Job.state == JobState.RUNNING,
                _last_sign_of_life() <= cutoff).values(**values)
                .execution_options(synchronize_session=False)).rowcount
            if not taken:
                continue  # renewed meanwhile, finished, or settled by another manager or worker
            if resume:
                db.after_commit(session, lambda job_id=job_id: dispatch(job_id))
                report.resumed.append(job_id)
                emit(session, "job.resumed", f"job {job.kind} was interrupted ({lost}); resumed with the same id "
                     "to finish its work", severity=Severity.WARNING, job_id=job_id)
                continue
            cleaned = []
            if registered is not None and registered.recover is not None:
                cleaned = registered.recover(session, dict(job.params or {}), reason=values["error"],
                                             job_id=job_id) or []
            report.failed.append(job_id)
            report.cleaned[job_id] = cleaned
            emit(session, "job.failed", f"job {job.kind} failed: {values['error']}", severity=Severity.ERROR,
                 actor=job.created_by, job_id=job_id, correlation_id=job.correlation_id)
    if not kind_prefix:
        _resend_stale_pending(report, ttl)
    return report


def _resend_stale_pending(report: Recovery, ttl: float) -> None:
    """A PENDING job sent more than a lease ago and still not claimed may have been lost with its message (the
    in-process pool of a manager that died, a broker that lost it): send it again. Sending twice is harmless
    (only a PENDING job is claimed); `heartbeat_at` of a PENDING job is when it was last sent (NULL: at creation),
    so a long queue is sent again at most once a lease."""
    with db.session_scope() as session:
        now = db.clock(session)
        cutoff = now - dt.timedelta(seconds=ttl)
        stale = (Job.state == JobState.PENDING) & Job.cancel_requested.is_(False) & \
            (func.coalesce(Job.heartbeat_at, Job.created_at) <= cutoff)
        for job_id in list(session.scalars(select(Job.id).where(stale))):
            if session.execute(update(Job).where(Job.id == job_id, stale).values(heartbeat_at=now)
                               .execution_options(synchronize_session=False)).rowcount:
                db.after_commit(session, lambda job_id=job_id: dispatch(job_id))
                report.resent.append(job_id)


def recovery_period() -> float:
    """How often the recovery pass runs: a third of the lease, so a dead runner's jobs are settled at most
    VDI_JOB_LEASE_SECONDS * 4/3 after its last renewal."""
    return _lease_seconds() / 3


def run_recovery_loop(stop: threading.Event) -> None:
    """`vdi worker`'s recovery: the pass every recovery_period() until `stop` (managers run it on the leader)."""
    while not stop.wait(recovery_period()):
        try:
            recover_orphaned_jobs()
        except Exception:
            log.exception("job recovery pass failed")


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
