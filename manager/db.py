"""The ONLY place database sessions open and commit.

- `request_session()` is the FastAPI dependency: commit when the endpoint returns, roll back on error.
- `session_scope()` is the same for jobs, loops and scripts.
- Work to do after a commit (sending jobs, publishing events) is registered with `after_commit(session, fn)`;
  it runs only if the transaction commits and is dropped on rollback.
Services and repositories take a `Session` and at most `flush()`.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import weakref
from collections.abc import AsyncIterator, Callable, Iterator

from sqlalchemy import create_engine, event
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, sessionmaker
from starlette.concurrency import run_in_threadpool

log = logging.getLogger(__name__)

_lock = threading.Lock()

# Connections per process. A request holds its session's connection from its first statement to its commit, and
# between those it waits for worker threads; if more requests held connections than the pool has, the worker
# threads would all wait for a connection while the holders wait for a thread. So at most REQUEST_SLOTS requests
# have a session at once (the others wait, holding nothing); the rest of the pool is for background work (jobs,
# monitors).
POOL_SIZE, POOL_OVERFLOW = 20, 40
REQUEST_SLOTS = 48
_request_slots: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Semaphore] = weakref.WeakKeyDictionary()


def _slots() -> asyncio.Semaphore:
    """The running event loop's request slots (a semaphore belongs to one loop; tests run several)."""
    loop = asyncio.get_running_loop()
    slots = _request_slots.get(loop)
    if slots is None:
        slots = _request_slots[loop] = asyncio.Semaphore(REQUEST_SLOTS)
    return slots


_engine: Engine | None = None
_sessionmaker: sessionmaker[Session] | None = None


def make_engine(url: str, **kwargs) -> Engine:
    if url.startswith("sqlite"):
        kwargs.setdefault("connect_args", {"check_same_thread": False, "timeout": 30})
        engine = create_engine(url, **kwargs)

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn, _record):
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.close()

        return engine
    if "poolclass" not in kwargs:
        kwargs.setdefault("pool_size", POOL_SIZE)
        kwargs.setdefault("max_overflow", POOL_OVERFLOW)
    kwargs.setdefault("pool_pre_ping", True)
    return create_engine(url, **kwargs)


def configure(url: str | None = None, engine: Engine | None = None) -> Engine:
    """Point the process at a database (once at start-up, or per test)."""
    global _engine, _sessionmaker
    with _lock:
        if engine is None:
            if url is None:
                from manager.config import get_settings

                url = get_settings().effective_database_url
            engine = make_engine(url)
        _engine = engine
        _sessionmaker = sessionmaker(bind=engine, expire_on_commit=False)
        return engine


def get_engine() -> Engine:
    if _engine is None:
        configure()
    assert _engine is not None
    return _engine


def new_session() -> Session:
    if _sessionmaker is None:
        configure()
    assert _sessionmaker is not None
    return _sessionmaker()


def after_commit(session: Session, fn: Callable[[], None]) -> None:
    """Run `fn` once the session's current transaction commits; forget it on rollback."""
    session.info.setdefault("after_commit", []).append(fn)


@event.listens_for(Session, "after_commit")
def _run_after_commit(session: Session) -> None:
    callbacks = session.info.pop("after_commit", [])
    for fn in callbacks:
        try:
            fn()
        except Exception:  # a failed send must not turn a committed request into an error
            log.exception("after-commit callback failed")


# Keys of Session.info holding work that lives and dies with the transaction (after_commit callbacks, events
# waiting to be written): a rollback of the outermost transaction forgets them.
_TRANSACTION_WORK = {"after_commit"}


def forget_on_rollback(key: str) -> None:
    """Declare `session.info[key]` as work of the current transaction, dropped when it rolls back."""
    _TRANSACTION_WORK.add(key)


@event.listens_for(Session, "after_soft_rollback")
def _forget_transaction_work(session: Session, previous_transaction) -> None:
    if previous_transaction.parent is None:  # only the outermost rollback discards the work
        for key in _TRANSACTION_WORK:
            session.info.pop(key, None)


@contextlib.contextmanager
def session_scope() -> Iterator[Session]:
    session = new_session()
    try:
        yield session
    except BaseException:
        _rollback_and_close(session)
        raise
    _commit_and_close(session)


async def request_session() -> AsyncIterator[Session]:
    """FastAPI dependency: one session per request, committed when the endpoint returns normally.

    Asynchronous so that opening the session costs no trip to a worker thread (a Session connects lazily, on its
    first statement); the commit, which talks to the database, runs in one. The route's own work runs in a worker
    thread too, one at a time, so the session is never used by two threads at once."""
    async with _slots():
        session = new_session()
        try:
            yield session
        except BaseException:
            await run_in_threadpool(_rollback_and_close, session)
            raise
        if session.info.get(_COMMITTED_IN_ROUTE) and not session.in_transaction():
            session.close()  # nothing left that talks to the database
        else:
            await run_in_threadpool(_commit_and_close, session)


_COMMITTED_IN_ROUTE = "vdi_committed_in_route"


def commit_in_route(session: Session) -> None:
    """Commit at the end of a route, in the route's worker thread, so that the request's dependency has nothing
    left to do and spares the request a trip to another thread (the broker's connect: every trip costs CPU and
    waiting under a login storm)."""
    session.commit()
    session.info[_COMMITTED_IN_ROUTE] = True


def _commit_and_close(session: Session) -> None:
    try:
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


def _rollback_and_close(session: Session) -> None:
    try:
        session.rollback()
    finally:
        session.close()


def get_or_404(session: Session, model: type, obj_id, kind: str):
    """The row of `model` with this primary key; NotFound (404) naming `kind` and the id otherwise."""
    from core.errors import NotFound

    obj = session.get(model, obj_id)
    if obj is None:
        raise NotFound(kind=kind, id=obj_id)
    return obj


def is_postgres(session_or_engine) -> bool:
    bind = session_or_engine.get_bind() if isinstance(session_or_engine, Session) else session_or_engine
    return bind.dialect.name == "postgresql"
