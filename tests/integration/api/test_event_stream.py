"""GET /api/v1/events/stream on a real uvicorn server and real Postgres: its database reads wait in worker threads,
never on the event loop (a stream stuck behind a lock leaves the rest of the API answering, and keep-alives still
go out); events written after the stream opened arrive with their ids; Last-Event-ID resumes after an id."""
from __future__ import annotations

import queue
import threading
import time
from collections.abc import Iterator

import httpx
import pytest
from sqlalchemy import select, text

from tests.integration.broker.conftest import API, api_server, bearer, work_dir  # noqa: F401 (fixtures)

WAIT_S = 60.0  # how long a step may take before the test gives up (a hang is a failure, not a measurement)
STREAM_CODE = "directory.synced"  # any declared code with no object (event_manager/catalog.py)


@pytest.fixture
def quick_keepalive(monkeypatch) -> None:
    """The server (started after this) sends a keep-alive every 0.2 s instead of every 15 s."""
    monkeypatch.setenv("VDI_EVENT_STREAM_KEEPALIVE_SECONDS", "0.2")


@pytest.fixture
def token(clean_db) -> str:
    from manager import db
    from manager.auth import issue_token
    from manager.bootstrap import ensure_admin

    with db.session_scope() as session:
        admin, _ = ensure_admin(session, password="admin-test-password")
        return issue_token(session, admin, name="stream tests")


class Stream:
    """An SSE response read line by line in a thread of its own (httpx's reads block)."""

    def __init__(self, url: str, headers: dict[str, str]) -> None:
        self.lines: queue.Queue[str | None] = queue.Queue()
        self._client = httpx.Client(timeout=httpx.Timeout(WAIT_S, read=None))
        self._response = self._client.send(self._client.build_request("GET", url, headers=headers), stream=True)
        assert self._response.status_code == 200, self._response.read()
        assert self._response.headers["content-type"].startswith("text/event-stream")
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        try:
            for line in self._response.iter_lines():
                self.lines.put(line)
        except httpx.HTTPError:
            pass
        self.lines.put(None)

    def next_line(self) -> str:
        line = self.lines.get(timeout=WAIT_S)
        assert line is not None, "the stream ended"
        return line

    def next_event(self) -> dict[str, str]:
        """The next event's fields (id, event, data), skipping comments."""
        fields: dict[str, str] = {}
        while True:
            line = self.next_line()
            if line == "" and fields:
                return fields
            if line and not line.startswith(":"):
                name, _, value = line.partition(": ")
                fields[name] = value

    def close(self) -> None:
        self._response.close()
        self._client.close()


@pytest.fixture
def open_stream(api_server, token) -> Iterator:  # noqa: F811 (api_server is a fixture)
    streams: list[Stream] = []

    def open_(query: str = "", **headers: str) -> Stream:
        stream = Stream(f"{api_server.url}{API}/events/stream{query}", {**bearer(token), **headers})
        streams.append(stream)
        return stream

    yield open_
    for stream in streams:
        stream.close()


def emit_event(message: str, session=None) -> int | None:
    """Write one event through event_manager (in a transaction of its own: returns its id; or in `session`'s,
    which writes it at its commit)."""
    from event_manager.service import emit
    from manager import db

    if session is not None:
        emit(session, STREAM_CODE, message, actor="tests")
        return None
    with db.session_scope() as own:
        emit(own, STREAM_CODE, message, actor="tests")
    return event_id(message)


def event_id(message: str) -> int:
    from manager import db
    from manager.models import Event

    with db.session_scope() as s:
        return s.scalar(select(Event.id).where(Event.message == message))


def wait_for_lock_waiter(table: str) -> None:
    """Until some backend waits for a lock on `table` (the stream's read, behind our lock)."""
    from manager import db

    deadline = time.monotonic() + WAIT_S
    while True:
        with db.session_scope() as s:
            waiting = s.scalar(text("SELECT count(*) FROM pg_locks WHERE NOT granted "
                                    "AND relation = CAST(:t AS regclass)"), {"t": table})
        if waiting:
            return
        assert time.monotonic() < deadline, f"nothing waited for the lock on {table}"
        time.sleep(0.05)


def test_a_stream_waiting_for_the_database_leaves_the_server_answering(quick_keepalive, api_server,  # noqa: F811
                                                                       open_stream):
    from manager import db

    with db.session_scope() as s:
        newest = s.scalar(text("SELECT coalesce(max(id), 0) FROM events"))  # (logging in writes events too)
    locker = db.new_session()
    try:
        # Another transaction holds the events table: the stream's next read has to wait for it.
        locker.execute(text("LOCK TABLE events IN ACCESS EXCLUSIVE MODE"))
        stream = open_stream(f"?after_id={newest}")
        wait_for_lock_waiter("events")
        # The same server still answers while the stream's read waits (on the old code the read blocked the
        # event loop: this request hung until the lock went away).
        health = httpx.get(f"{api_server.url}{API}/health", timeout=WAIT_S)
        assert health.status_code == 200 and health.json()["db"]["status"] == "ok", health.text
        # and the waiting stream still sends keep-alives
        while stream.next_line() != ": keep-alive":
            pass
        # An event written by the lock's holder arrives once the lock goes away.
        emit_event("written while the stream waited", locker)
        locker.commit()
    finally:
        locker.rollback()
        locker.close()
    written = event_id("written while the stream waited")
    got = stream.next_event()
    assert got["id"] == str(written) and got["event"] == STREAM_CODE, got
    assert f'"id": {written}' in got["data"] and "written while the stream waited" in got["data"]


def test_an_event_written_after_the_stream_opened_arrives_with_its_id(api_server, open_stream):  # noqa: F811
    before = emit_event("before the stream")
    stream = open_stream()  # from the newest event on: `before` is not sent
    first = emit_event("after the stream opened")
    got = stream.next_event()
    assert got["id"] == str(first) and got["event"] == STREAM_CODE and first > before, got
    assert "after the stream opened" in got["data"]

    # A client that reconnects with Last-Event-ID gets what came after that id, and only that.
    second = emit_event("while the client was away")
    resumed = open_stream(**{"Last-Event-ID": str(first)})
    assert resumed.next_event()["id"] == str(second)
    assert stream.next_event()["id"] == str(second)
    # after_id does the same
    assert open_stream(f"?after_id={before}").next_event()["id"] == str(first)


def _user_with_desktop(name: str) -> tuple[str, str, str]:
    """A plain user holding one desktop; returns (token, user id, desktop id)."""
    from manager import db
    from manager.auth import issue_token
    from manager.models import Desktop, User

    with db.session_scope() as session:
        user = User(username=name, domain="local")
        session.add(user)
        session.flush()
        desktop = Desktop(name=f"{name}-desk", assigned_user_id=user.id)
        session.add(desktop)
        session.flush()
        return issue_token(session, user, name="stream"), user.id, desktop.id


def test_a_plain_user_streams_only_events_about_them_and_their_desktops(api_server, open_stream):  # noqa: F811
    from event_manager.service import emit
    from manager import db

    token, me, mine = _user_with_desktop("alice")
    _, other, theirs = _user_with_desktop("bob")
    start = emit_event("the starting line")
    stream = Stream(f"{api_server.url}{API}/events/stream?after_id={start}", bearer(token))
    try:
        with db.session_scope() as session:
            emit(session, "user.login", "bob logged in", user_id=other)
            emit(session, "desktop.started", "bob's desktop started", desktop_id=theirs)
            emit(session, "host.up", "a host is up", host_id="h-1")
            emit(session, "desktop.started", "alice's desktop started", desktop_id=mine)
            emit(session, "user.login", "alice logged in", user_id=me)
        got = [stream.next_event() for _ in range(2)]
        assert ["alice's desktop started" in got[0]["data"], "alice logged in" in got[1]["data"]] == [True, True]
        # Resuming after the first of them gets the second only, still filtered.
        resumed = Stream(f"{api_server.url}{API}/events/stream", {**bearer(token), "Last-Event-ID": got[0]["id"]})
        try:
            assert resumed.next_event()["id"] == got[1]["id"]
            emit_event("an event about nobody in particular")
            with db.session_scope() as session:
                emit(session, "user.logout", "alice logged out", user_id=me)
            assert "alice logged out" in resumed.next_event()["data"]  # the unrelated one was skipped
        finally:
            resumed.close()
    finally:
        stream.close()


def test_open_streams_leave_the_api_answering(api_server, open_stream, token):  # noqa: F811
    """Twenty streams open and idle (their reads wait on the server): other requests are still served, and every
    stream gets the next event."""
    streams = [open_stream() for _ in range(20)]
    for stream in streams:
        assert stream.next_line() == ": stream open"
    for _ in range(5):
        answer = httpx.get(f"{api_server.url}{API}/events?limit=1", headers=bearer(token), timeout=WAIT_S)
        assert answer.status_code == 200, answer.text
    written = emit_event("to every stream")
    assert {stream.next_event()["id"] for stream in streams} == {str(written)}


def test_the_events_table_notifies_the_newest_id_at_commit(clean_db, pg_url):
    """The contract the streams' LISTEN relies on: NOTIFYs at commit carrying ids (the newest included), none on
    rollback."""
    import psycopg

    from event_manager.service import emit
    from manager import db

    listener = psycopg.connect(pg_url.replace("postgresql+psycopg://", "postgresql://"), autocommit=True)
    try:
        listener.execute("LISTEN vdi_events")
        with db.session_scope() as session:
            for i in range(3):
                emit(session, STREAM_CODE, f"notify {i}", actor="tests")
            session.flush()
            assert list(listener.notifies(timeout=0.5, stop_after=1)) == []  # not before the commit
        newest = event_id("notify 2")
        notes = list(listener.notifies(timeout=WAIT_S, stop_after=1))
        while notes and max(int(n.payload) for n in notes) < newest:  # (one per INSERT statement)
            more = list(listener.notifies(timeout=WAIT_S, stop_after=1))
            assert more, f"no notification of event {newest}: {notes}"
            notes += more
        assert {n.channel for n in notes} == {"vdi_events"} and max(int(n.payload) for n in notes) == newest
        session = db.new_session()
        emit(session, STREAM_CODE, "rolled back", actor="tests")
        session.flush()
        session.rollback()
        session.close()
        emit_event("after the rollback")
        [note] = list(listener.notifies(timeout=WAIT_S, stop_after=1))  # nothing came from the rolled back one
        assert int(note.payload) == event_id("after the rollback")
    finally:
        listener.close()


def test_a_stopping_server_ends_its_streams(api_server, open_stream):  # noqa: F811
    """SIGTERM with streams open: the streams end and the server exits on its own (uvicorn waits for open responses,
    so without this a stop hung until the clients hung up, or until a SIGKILL)."""
    import signal

    stream = open_stream()
    assert stream.next_line() == ": stream open"
    api_server.process.send_signal(signal.SIGTERM)
    # an orderly exit: 0, or uvicorn raising the SIGTERM again after its shutdown (not a timeout, not a SIGKILL)
    assert api_server.process.wait(WAIT_S) in (0, -signal.SIGTERM)
    while stream.lines.get(timeout=WAIT_S) is not None:
        pass  # the rest of the stream, up to its end
