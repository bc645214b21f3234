"""GET /api/v1/events/stream: server-sent events, one shared reader per process, never blocking the event loop.

- One `EventHub` per event loop reads new events once (in a worker thread: a slow or locked read never stops the
  loop) and hands them to every open stream; N streams cost one read per wake-up, not N.
- It wakes when Postgres says events were committed (LISTEN vdi_events; a trigger NOTIFYs the newest id of each
  INSERT, delivered at commit only), or every FALLBACK_POLL_S anyway; on SQLite (embedded) it polls every POLL_S.
  It reads at most every GATHER_S: a flood of events becomes a few larger writes to each stream.
- Event ids are taken before commit, so a transaction that commits late can land behind ids already streamed: the
  hub reads LOOKBACK ids behind its newest and streams what it has not seen yet.
- Each stream filters by the caller's permissions: with events:read, every event; otherwise only events about the
  caller (user_id) or one of the desktops they hold. Resume with Last-Event-ID (or after_id): the stream first sends
  what the caller may see after that id, then live events.
"""
from __future__ import annotations

import asyncio
import collections
import json
import logging
import os
import signal
import threading
import time
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import StreamingResponse
from sqlalchemy import func, select
from starlette.concurrency import run_in_threadpool

from manager import db
from manager.api import schemas as s
from manager.auth import Principal, require
from manager.models import Desktop, Event

log = logging.getLogger("vdi.events.stream")
router = APIRouter(tags=["events"])

POLL_S = 1.0
GATHER_S = 0.2  # at most five reads a second, however fast events come (each read serves every stream)
FALLBACK_POLL_S = 5.0
KEEPALIVE_S = float(os.environ.get("VDI_EVENT_STREAM_KEEPALIVE_SECONDS", "15"))
BATCH = 500
LOOKBACK = 200
SEEN = 4096
CHANNEL = "vdi_events"
DISCONNECT_CHECK_S = 1.0  # a client gone is noticed this soon (its stream then stops reading)
QUEUE_MAX = 10000  # a stream this far behind is closed (the client resumes with Last-Event-ID)


def _events_after(last: int, *, user_id: str | None = None, desktops: frozenset[str] = frozenset(),
                  limit: int = BATCH) -> list[dict[str, Any]]:
    stmt = select(Event).where(Event.id > last, Event.deleted.is_(False))
    if user_id is not None:
        about = Event.user_id == user_id
        stmt = stmt.where(about | Event.desktop_id.in_(desktops) if desktops else about)
    with db.session_scope() as session:
        rows = session.scalars(stmt.order_by(Event.id).limit(limit)).all()
        return [s.EventOut.model_validate(r).model_dump(mode="json") for r in rows]


def _newest_id() -> int:
    with db.session_scope() as session:
        return session.scalar(select(func.max(Event.id))) or 0


def _hub_start() -> tuple[int, list[int]]:
    """The newest event id and the ids just behind it (already committed: no stream needs them from the hub)."""
    newest = _newest_id()
    with db.session_scope() as session:
        return newest, list(session.scalars(select(Event.id).where(Event.id > newest - LOOKBACK)))


def _held_desktops(user_id: str) -> frozenset[str]:
    with db.session_scope() as session:
        return frozenset(session.scalars(select(Desktop.id).where(Desktop.assigned_user_id == user_id)))


class _Listener(threading.Thread):
    """LISTEN vdi_events on a connection of its own; each notification wakes the hub (Postgres only)."""

    def __init__(self, url: str, wake) -> None:
        super().__init__(name="vdi-events-listen", daemon=True)
        self.url, self.wake, self.stopping = url, wake, threading.Event()

    def run(self) -> None:
        import psycopg

        while not self.stopping.is_set():
            try:
                with psycopg.connect(self.url, autocommit=True) as conn:
                    conn.execute(f"LISTEN {CHANNEL}")
                    while not self.stopping.is_set():
                        if any(True for _ in conn.notifies(timeout=1.0, stop_after=1)):
                            self.wake()
            except Exception as exc:  # the database restarting: listen again; the hub's fallback poll covers the gap
                log.warning("event stream LISTEN failed (%s); retrying", type(exc).__name__)
                self.stopping.wait(2.0)


class EventHub:
    """The events of one event loop's streams, read once."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.queues: set[asyncio.Queue] = set()
        self.wake = asyncio.Event()
        self.last = 0
        self.seen: collections.deque[int] = collections.deque(maxlen=SEEN)
        self.task: asyncio.Task | None = None
        self.ready: asyncio.Future | None = None
        self.listener: _Listener | None = None

    def _notify_threadsafe(self) -> None:
        self.loop.call_soon_threadsafe(self.wake.set)

    def subscribe(self) -> asyncio.Queue:
        queue: asyncio.Queue = asyncio.Queue(maxsize=QUEUE_MAX)
        self.queues.add(queue)
        if self.task is None:
            self.ready = self.loop.create_future()
            self.task = asyncio.ensure_future(self._run())
        return queue

    async def started(self) -> int:
        """The newest event id when the hub started (waits until it has)."""
        assert self.ready is not None
        return await asyncio.shield(self.ready)

    def unsubscribe(self, queue: asyncio.Queue) -> None:
        self.queues.discard(queue)
        if not self.queues and self.task is not None:
            self.task.cancel()
            self.task = None
            if self.ready is not None and not self.ready.done():
                self.ready.cancel()
            if self.listener is not None:
                self.listener.stopping.set()
                self.listener = None

    async def _start(self) -> None:
        self.last, recent = await run_in_threadpool(_hub_start)
        self.seen.clear()
        self.seen.extend(recent)
        engine = db.get_engine()
        if engine.dialect.name == "postgresql":
            url = engine.url.set(drivername="postgresql").render_as_string(hide_password=False)
            self.listener = _Listener(url, self._notify_threadsafe)
            self.listener.start()

    async def _run(self) -> None:
        while True:  # the database may be locked or away: the hub starts when it can
            try:
                await self._start()
                break
            except Exception:
                log.exception("event stream hub could not start")
                await asyncio.sleep(POLL_S)
        self.ready.set_result(self.last)
        while True:
            await asyncio.sleep(GATHER_S)  # events arriving meanwhile go out together: fewer reads and writes
            try:
                await asyncio.wait_for(self.wake.wait(), FALLBACK_POLL_S if self.listener else POLL_S)
            except asyncio.TimeoutError:
                pass
            self.wake.clear()
            try:
                rows = await run_in_threadpool(_events_after, max(self.last - LOOKBACK, 0), limit=BATCH + LOOKBACK)
            except Exception:
                log.exception("event stream read failed")
                continue
            seen = set(self.seen)
            fresh = [r for r in rows if r["id"] not in seen]
            if not fresh:
                continue
            self.seen.extend(r["id"] for r in fresh)
            self.last = max(self.last, fresh[-1]["id"])
            batch = [(r, _sse(r)) for r in fresh]  # serialised once for every stream
            for queue in list(self.queues):
                try:
                    queue.put_nowait(batch)
                except asyncio.QueueFull:
                    pass  # left full: that stream sees it and closes, its client resumes with Last-Event-ID
            if len(rows) >= BATCH + LOOKBACK:
                self.wake.set()  # more are waiting


_hubs: dict[asyncio.AbstractEventLoop, EventHub] = {}
_closing = threading.Event()  # the server was told to stop: streams end (uvicorn waits for open responses)


def _end_streams_on_exit() -> None:
    """Chain our own step in front of the server's SIGTERM/SIGINT handlers (uvicorn's, installed at start): set
    _closing, so that open streams end and a stopping server does not wait for clients that never hang up. Their
    clients reconnect to another manager with Last-Event-ID."""
    if getattr(_end_streams_on_exit, "done", False) or threading.current_thread() is not threading.main_thread():
        return
    _end_streams_on_exit.done = True
    for sig in (signal.SIGTERM, signal.SIGINT):
        previous = signal.getsignal(sig)
        if not callable(previous):
            continue

        def handler(signum, frame, previous=previous):
            _closing.set()
            previous(signum, frame)

        signal.signal(sig, handler)


def hub() -> EventHub:
    _end_streams_on_exit()
    loop = asyncio.get_running_loop()
    if loop not in _hubs:
        for old in [k for k in _hubs if k.is_closed()]:
            del _hubs[old]
        _hubs[loop] = EventHub(loop)
    return _hubs[loop]


def _sse(item: dict[str, Any]) -> str:
    return f"id: {item['id']}\nevent: {item['code']}\ndata: {json.dumps(item)}\n\n"


@router.get("/events/stream")
async def stream_events(request: Request, who: Annotated[Principal, Depends(require("self:read"))],
                        after_id: Annotated[int | None, Query(ge=0)] = None) -> StreamingResponse:
    """Server-sent events: every new event you may see as it is committed (everything with events:read; otherwise
    events about you and the desktops you hold), resumable with `after_id` or Last-Event-ID, and a keep-alive
    comment at least every 15 s."""
    last = after_id
    if last is None and request.headers.get("last-event-id", "").isdigit():
        last = int(request.headers["last-event-id"])
    if last is None:
        # "From now on" is fixed before the response starts: an event the client writes once it has the 200 must
        # come (the hub's own start may be later than that, or, with streams already open, long before).
        last = await run_in_threadpool(_newest_id)
    everything = await run_in_threadpool(who.can, "events:read")
    user_id = None if everything else who.user_id

    async def keepalives(task: asyncio.Future):
        """Keep-alive comments until `task` is done (a read waiting for a lock must not look like a dead stream)."""
        while not (await asyncio.wait({task}, timeout=KEEPALIVE_S))[0]:
            yield ": keep-alive\n\n"

    async def generate():
        the_hub = hub()
        queue = the_hub.subscribe()
        sent: collections.deque[int] = collections.deque(maxlen=SEEN)
        try:
            yield ": stream open\n\n"
            ready = asyncio.ensure_future(the_hub.started())
            async for comment in keepalives(ready):
                yield comment
            start = last
            desktops: frozenset[str] = frozenset()
            if not everything:
                read = asyncio.ensure_future(run_in_threadpool(_held_desktops, who.user_id))
                async for comment in keepalives(read):
                    yield comment
                desktops = read.result()
            cursor = start
            while True:  # what was missed since `start` (a resume), read in pages
                read = asyncio.ensure_future(run_in_threadpool(_events_after, cursor, user_id=user_id,
                                                               desktops=desktops))
                async for comment in keepalives(read):
                    yield comment
                backlog = read.result()
                for item in backlog:
                    sent.append(item["id"])
                    yield _sse(item)
                if len(backlog) < BATCH:
                    break
                cursor = backlog[-1]["id"]
            quiet_since = time.monotonic()
            while not await request.is_disconnected() and not _closing.is_set():
                if queue.full():
                    return  # too far behind: the client reconnects with Last-Event-ID
                try:
                    batch = await asyncio.wait_for(queue.get(), min(KEEPALIVE_S, DISCONNECT_CHECK_S))
                except asyncio.TimeoutError:
                    if time.monotonic() - quiet_since >= KEEPALIVE_S:
                        quiet_since = time.monotonic()
                        yield ": keep-alive\n\n"
                    continue
                quiet_since = time.monotonic()
                if not everything and any(item["user_id"] == user_id for item, _ in batch):
                    desktops = await run_in_threadpool(_held_desktops, who.user_id)  # assignments may have changed
                already = set(sent)
                out = []
                for item, sse in batch:
                    if item["id"] > start and item["id"] not in already and (
                            everything or item["user_id"] == user_id or item["desktop_id"] in desktops):
                        sent.append(item["id"])
                        out.append(sse)
                if out:
                    yield "".join(out)  # one write for the batch
        finally:
            the_hub.unsubscribe(queue)

    return StreamingResponse(generate(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
