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
import dataclasses
import datetime as dt
import logging
import os
import select
import threading
import time
import weakref
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

from anyio import from_thread
from sqlalchemy import create_engine, event, exc, text
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.pool import Pool
from starlette.concurrency import run_in_threadpool

log = logging.getLogger(__name__)

_lock = threading.Lock()

# Connections per process. A request holds its session's connection from its first statement to its commit, and
# between those it waits for worker threads; if more requests held connections than the pool has, the worker
# threads would all wait for a connection while the holders wait for a thread. So at most REQUEST_SLOTS requests
# have a session at once (the others wait, holding nothing); the rest of the pool is for background work (jobs,
# monitors). Few slots on purpose: on a few cores more requests in flight only add waiting (and Postgres backends,
# each with its own caches to warm): a 2,000-user login storm on 2 cores ran about 375 connects/s with 8 slots per
# process, 305 with 24 and 250 with 48 (bench/login_storm.py). A request that waits long without a transaction (a
# desktop booting) gives its slot up (give_up_request_slot).
POOL_SIZE, POOL_OVERFLOW = 20, 40
REQUEST_SLOTS = 8
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
        _create_private_sqlite_file(url)
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
    engine = create_engine(url, **kwargs)
    if not kwargs.get("pool_pre_ping"):
        event.listen(engine, "checkin", _note_idle_since)
        event.listen(engine, "checkout", _ping_if_suspect(engine.dialect))
    return engine


def open_request_connections(count: int = REQUEST_SLOTS) -> None:
    """Open the connections the request slots use before the first request, each with every table's catalog
    entries loaded. A new Postgres connection costs a server process and, on its first statement against each
    table, catalog lookups: paid by the first requests, they made the first second of a login storm right after a
    start queue up (bench/login_storm.py --rate). Postgres only; the embedded SQLite needs none of it."""
    from manager.models import Base

    engine = get_engine()
    if engine.dialect.name != "postgresql":
        return
    probes = [text(f'SELECT 1 FROM "{table.name}" LIMIT 0') for table in Base.metadata.sorted_tables]
    try:
        with contextlib.ExitStack() as held:  # all at once, so that the pool keeps `count` of them
            for _ in range(count):
                conn = held.enter_context(engine.connect())
                for probe in probes:
                    conn.execute(probe)
                conn.rollback()
    except exc.SQLAlchemyError as error:  # a head start, never a reason not to start: requests will say what is wrong
        log.warning("could not open the database connections ahead of requests: %s", error)


def _create_private_sqlite_file(url: str) -> None:
    """The embedded database holds secrets: create its file 0600 before SQLite does (SQLite would make it 0644;
    its -wal and -shm files take the database file's mode)."""
    from sqlalchemy.engine import make_url

    from manager.config import open_private

    database = make_url(url).database
    if not database or database == ":memory:" or database.startswith("file:"):
        return
    os.close(open_private(Path(database), os.O_RDONLY | os.O_CREAT))


# A pooled connection is pinged before use only when it may be dead: the server wrote to it while it sat in the
# pool (a restart or pg_terminate_backend sends an error, then closes; a reset makes the socket readable too), or
# it sat there long (a firewall may have dropped it quietly). SQLAlchemy's pool_pre_ping pings every checkout,
# one round trip more for every request (a connect under a login storm makes three).
PING_AFTER_IDLE_S = 30.0
_IDLE_SINCE = "vdi_idle_since"


def _note_idle_since(_dbapi_connection, connection_record) -> None:
    connection_record.info[_IDLE_SINCE] = time.monotonic()


def _ping_if_suspect(dialect) -> Callable[..., None]:
    def on_checkout(dbapi_connection, connection_record, _connection_proxy) -> None:
        idle_since = connection_record.info.pop(_IDLE_SINCE, None)
        if idle_since is None:
            return  # just opened
        if time.monotonic() - idle_since < PING_AFTER_IDLE_S and not _socket_readable(dbapi_connection):
            return
        try:
            dialect.do_ping(dbapi_connection)
        except dialect.loaded_dbapi.Error as error:
            if dialect.is_disconnect(error, dbapi_connection, None):
                raise exc.DisconnectionError() from error  # the pool opens a fresh connection and tries again
            raise

    return on_checkout


def _socket_readable(dbapi_connection) -> bool:
    try:
        fd = dbapi_connection.pgconn.socket
    except Exception:  # a closed or broken connection has no socket
        return True
    return bool(select.select([fd], [], [], 0)[0])


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
    slot = _RequestSlot(_slots())
    await slot.semaphore.acquire()
    try:
        session = new_session()
        session.info[_REQUEST_SLOT] = slot
        try:
            yield session
        except BaseException:
            await run_in_threadpool(_rollback_and_close, session)
            raise
        if session.info.get(_COMMITTED_IN_ROUTE) and not session.in_transaction():
            session.close()  # nothing left that talks to the database
        else:
            await run_in_threadpool(_commit_and_close, session)
    finally:
        if slot.held:
            slot.semaphore.release()


_COMMITTED_IN_ROUTE = "vdi_committed_in_route"
_REQUEST_SLOT = "vdi_request_slot"


@dataclasses.dataclass
class _RequestSlot:
    semaphore: asyncio.Semaphore
    held: bool = True


def give_up_request_slot(session: Session) -> None:
    """Before a long wait in a route's worker thread (a desktop booting, a power action): the request gives its
    session slot to the requests waiting for one, for good. What it does after the wait runs outside the slot
    budget, bounded by the worker threads (fewer than the pool's connections). Taking a slot back instead would
    deadlock: every worker thread could end up waiting for a slot while the slots' holders wait for a thread.
    Only when the session holds no transaction (commit first), so nothing is locked meanwhile. Outside a request
    (scripts, jobs) it does nothing."""
    slot = session.info.get(_REQUEST_SLOT)
    if slot is None or not slot.held or session.in_transaction():
        return
    slot.held = False
    from_thread.run_sync(slot.semaphore.release)


def commit_and_give_up_slot(session: Session) -> None:
    """Before a long wait in a request's worker thread (a power action, a desktop booting): commit what the
    request did so far, so nothing stays locked, and give its session slot up (give_up_request_slot)."""
    session.commit()
    give_up_request_slot(session)


@contextlib.contextmanager
def commit_in_route(session: Session, *, pipelined: bool = False) -> Iterator[None]:
    """Commit at the end of the block, in the route's worker thread, so that the request's dependency has nothing
    left to do and spares the request a trip to another thread (the broker's connect: every trip costs CPU and
    waiting under a login storm).

    `pipelined` (Postgres): the block's statements are sent without waiting for their answers, and the commit with
    them, in one round trip (psycopg's pipeline mode); the first error surfaces at the commit and rolls back the
    lot. Only for statements whose results nobody reads: an INSERT with its keys given, an UPDATE or DELETE
    without RETURNING, the events (event_manager writes them that way). A read that cannot wait for the commit
    goes through answers_needed."""
    if pipelined and is_postgres(session):
        fairy = session.connection().connection
        pipeline = fairy.driver_connection.pipeline()
        pipeline.__enter__()
        # Left when the connection goes back to the pool (_leave_pipeline), whichever way the transaction ends.
        fairy.info[_PIPELINE] = pipeline
    yield
    session.commit()
    session.info[_COMMITTED_IN_ROUTE] = True


_PIPELINE = "vdi_pipeline"


@contextlib.contextmanager
def answers_needed(connection: Connection) -> Iterator[None]:
    """For a statement whose rows are read on a connection that may be in a pipelined block (commit_in_route):
    leave psycopg's pipeline mode around it, and enter it again after. In pipeline mode a query's rows (and its
    cursor description) arrive only at the next sync, so SQLAlchemy takes it for a statement returning nothing
    (ResourceClosedError). Leaving costs one round trip, the sync, which also raises the error of a statement
    sent before, if any (the commit would have). Outside a pipeline it does nothing."""
    fairy = connection.connection
    pipeline = fairy.info.pop(_PIPELINE, None)
    if pipeline is None:
        yield
        return
    pipeline.__exit__(None, None, None)
    yield
    pipeline = fairy.driver_connection.pipeline()
    pipeline.__enter__()
    fairy.info[_PIPELINE] = pipeline


@event.listens_for(Pool, "reset")
def _leave_pipeline(_dbapi_connection, connection_record, _reset_state) -> None:
    pipeline = connection_record.info.pop(_PIPELINE, None)
    if pipeline is not None:
        pipeline.__exit__(None, None, None)


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


def get_or_404(session: Session, model: type, obj_id, kind: str, *, populate_existing: bool = False):
    """The row of `model` with this primary key; NotFound (404) naming `kind` and the id otherwise.
    `populate_existing`: read it again even if the session holds it (others changed it meanwhile)."""
    from core.errors import NotFound

    obj = session.get(model, obj_id, populate_existing=populate_existing)
    if obj is None:
        raise NotFound(kind=kind, id=obj_id)
    return obj


def clock(session: Session) -> dt.datetime:
    """Now by the database's clock: managers and workers on several machines compare lease times (the leader's,
    running jobs') on this one clock, never their own."""
    if is_postgres(session):
        return session.scalar(text("SELECT clock_timestamp()"))
    raw = session.scalar(text("SELECT strftime('%Y-%m-%d %H:%M:%f', 'now')"))
    return dt.datetime.fromisoformat(raw).replace(tzinfo=dt.timezone.utc)


def is_postgres(session_or_engine) -> bool:
    bind = session_or_engine.get_bind() if isinstance(session_or_engine, Session) else session_or_engine
    return bind.dialect.name == "postgresql"
