"""The browser console: single-use console tickets and the WebSocket proxy that relays noVNC's RFB to a guest's VNC
display (issue 21 item 2; docs/web.md, "The browser console").

- **A ticket** is issued by `POST /api/v1/broker/browser-console` (a user's connect: `broker.service.connect`, the
  same entitlement, assignment, start and session as a native connect, with VNC as the protocol) or
  `POST /api/v1/desktops/{id}/browser-console` (an administrator's console: `broker.service.admin_console`). Only its
  SHA-256 is stored (`BrowserConsole`), bound to the user and the desktop; it expires after VDI_TICKET_SECONDS and is
  spent by one atomic UPDATE, so a replay is refused by every manager process.
- **The proxy** (`/console/ws?ticket=...`) spends the ticket, then speaks RFB on both sides: to the guest it
  authenticates with a VNC password it sets through the node (`manager.provisioning.consoles`, server side), to the
  browser it offers no authentication (the ticket was the authentication). After the security handshake it relays
  bytes unchanged. The browser never learns the guest's address, port or password.
- **Limits**: a console with no keyboard or pointer input for VDI_CONSOLE_IDLE_SECONDS, or open longer than
  VDI_CONSOLE_MAX_SECONDS, is closed by the proxy.
- **Forced disconnect**: an administrator's `POST /api/v1/desktops/{id}/browser-console/disconnect` sets
  `close_requested_at` on the desktop's open consoles; each manager process polls the database for the consoles it
  holds (one query per POLL_SECONDS while any is open) and closes them. A database flag rather than Redis pub/sub: the
  embedded manager has no Redis, and one indexed query a second per process costs nothing.
- **Audit**: console.browser_open, console.browser_close (with the reason) and console.browser_refused events.
"""
from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import hashlib
import logging
import secrets
import struct
import time
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool
from starlette.websockets import WebSocket, WebSocketDisconnect

from broker import service as broker
from broker.console import ConsoleDescriptor
from core.enums import PowerState, Protocol, Severity
from core.errors import VdiError
from core.vnc import vnc_response
from event_manager.service import emit
from manager.config import get_settings
from manager.db import session_scope
from manager.models import BrowserConsole, Desktop, User, utcnow
from manager.provisioning import consoles

log = logging.getLogger(__name__)

WS_PATH = "/console/ws"
POLL_SECONDS = 1.0
RFB_VERSION = b"RFB 003.008\n"
# WebSocket close codes (4000-4999 are the application's): the console page shows the reason.
CLOSE_REFUSED = 4401
CLOSE_UNAVAILABLE = 4503
CLOSE_LIMIT = 4408
CLOSE_ADMIN = 4409


# ---- tickets ------------------------------------------------------------------------------------------------------
def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


@dataclass(frozen=True)
class Ticket:
    token: str = ""
    expires_at: dt.datetime | None = None
    console_id: str = ""


class _BrowserNodes:
    """broker.service.DesktopNodes for a browser console: the desktop is started as for any connect, but no
    password is set yet: the proxy sets one on the guest's VNC display when the browser arrives with its ticket."""

    def ensure_running(self, desktop_id: str, *, actor: str) -> None:
        consoles.NODES.ensure_running(desktop_id, actor=actor)

    @staticmethod
    def issue_console(session: Session, desktop: Any, protocol: Protocol, *, username: str,
                      fullscreen: bool = False) -> ConsoleDescriptor:
        expires = utcnow() + dt.timedelta(seconds=get_settings().ticket_seconds)
        return ConsoleDescriptor(protocol, "", None, desktop.id, desktop.name, expires_at=expires, username=username)


BROWSER_NODES = _BrowserNodes()


def issue_ticket(session: Session, result: broker.ConsoleResult, user_id: str) -> Ticket:
    """A single-use ticket for the console `result` (a connect's or an administrator's console, over VNC). Flushes."""
    token = secrets.token_urlsafe(32)
    row = BrowserConsole(token_hash=_digest(token), user_id=user_id, desktop_id=result.desktop_id,
                         session_id=result.session_id or None, expires_at=result.console.expires_at)
    session.add(row)
    session.flush()
    return Ticket(token, row.expires_at, row.id)


def _close_open(session: Session, *where) -> list[str]:
    """Flag the open browser consoles matching `where` for closing; each manager process holding one closes it
    within POLL_SECONDS. The ids flagged."""
    return list(session.scalars(update(BrowserConsole).where(
        *where, BrowserConsole.opened_at.is_not(None),
        BrowserConsole.closed_at.is_(None), BrowserConsole.close_requested_at.is_(None),
    ).values(close_requested_at=utcnow()).returning(BrowserConsole.id)).all())


def request_close(session: Session, desktop_id: str, *, actor: str) -> int:
    """Ask every manager process to close the desktop's open browser consoles; how many were open."""
    desktop = session.get(Desktop, desktop_id)
    ids = _close_open(session, BrowserConsole.desktop_id == desktop_id)
    emit(session, "console.browser_disconnect", f"{actor} disconnected {len(ids)} browser console(s) of desktop "
         f"{desktop.name if desktop else desktop_id}", actor=actor, desktop_id=desktop_id,
         pool_id=desktop.pool_id if desktop else None)
    return len(ids)


def request_close_of_user(session: Session, user_id: str, *, desktop_ids: list[str] | None = None) -> int:
    """Ask every manager process to close the user's open browser consoles (on `desktop_ids` only, when given):
    their access was revoked. The caller's event says why. How many were open."""
    where = [BrowserConsole.user_id == user_id]
    if desktop_ids is not None:
        where.append(BrowserConsole.desktop_id.in_(desktop_ids))
    return len(_close_open(session, *where))


@dataclass(frozen=True)
class Admitted:
    console_id: str
    desktop: Desktop
    user: User


def admit(token: str, *, now: dt.datetime | None = None) -> Admitted | str:
    """Spend a ticket (one atomic UPDATE: one winner among any number of processes). The console it opens, or why
    it is refused."""
    now = now or utcnow()
    digest = _digest(token or "")
    with session_scope() as session:
        won = session.execute(update(BrowserConsole).where(
            BrowserConsole.token_hash == digest, BrowserConsole.opened_at.is_(None), BrowserConsole.expires_at > now,
        ).values(opened_at=now)).rowcount == 1
        row = session.scalar(select(BrowserConsole).where(BrowserConsole.token_hash == digest))
        if row is None:
            return "unknown console ticket"
        desktop = session.get(Desktop, row.desktop_id)
        user = session.get(User, row.user_id)
        reason = ""
        if not won:
            reason = "console ticket already used" if row.opened_at is not None else "console ticket expired"
        elif desktop is None or desktop.power_state != PowerState.UP:
            reason = "the desktop is not running"
        elif user is None or not user.enabled:
            reason = "the account is disabled"
        if reason:
            if won:
                row.closed_at = now
            emit(session, "console.browser_refused", f"browser console of desktop "
                 f"{desktop.name if desktop else row.desktop_id} refused: {reason}", severity=Severity.WARNING,
                 actor=_actor(user), user_id=row.user_id, desktop_id=row.desktop_id, correlation_id=row.id)
            return reason
        emit(session, "console.browser_open", f"{_actor(user)} opened the browser console of desktop {desktop.name}",
             actor=_actor(user), user_id=user.id, desktop_id=desktop.id, pool_id=desktop.pool_id,
             correlation_id=row.id)
        session.expunge(desktop)
        session.expunge(user)
        return Admitted(row.id, desktop, user)


def _actor(user: User | None) -> str:
    return f"{user.username}@{user.domain}" if user is not None else "unknown"


def _closed(admitted: Admitted, reason: str) -> None:
    with session_scope() as session:
        session.execute(update(BrowserConsole).where(BrowserConsole.id == admitted.console_id)
                        .values(closed_at=utcnow()))
        emit(session, "console.browser_close", f"browser console of desktop {admitted.desktop.name} closed: {reason}",
             actor=_actor(admitted.user), user_id=admitted.user.id, desktop_id=admitted.desktop.id,
             pool_id=admitted.desktop.pool_id, correlation_id=admitted.console_id)


# ---- RFB on the guest's side -----------------------------------------------------------------------------------------
class RfbError(Exception):
    pass


class AuthFailed(RfbError):
    pass


async def _reason(reader: asyncio.StreamReader) -> str:
    (length,) = struct.unpack(">I", await reader.readexactly(4))
    return (await reader.readexactly(min(length, 4096))).decode("utf-8", "replace")


async def guest_handshake(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, password: str) -> None:
    """Version and security with the guest's VNC server, up to its SecurityResult. AuthFailed: wrong password."""
    version = await reader.readexactly(12)
    if not version.startswith(b"RFB 003."):
        raise RfbError(f"not an RFB server: {version!r}")
    writer.write(RFB_VERSION)
    (count,) = await reader.readexactly(1)
    if count == 0:
        raise RfbError(await _reason(reader))
    types = await reader.readexactly(count)
    if 2 in types:
        writer.write(b"\x02")
        challenge = await reader.readexactly(16)
        writer.write(vnc_response(password, challenge))
    elif 1 in types:
        writer.write(b"\x01")
    else:
        raise RfbError(f"the guest offers no security type the proxy speaks: {list(types)}")
    (result,) = struct.unpack(">I", await reader.readexactly(4))
    if result != 0:
        raise AuthFailed(await _reason(reader))


# One VNC password per desktop per process, reused while it is valid: concurrent consoles of one desktop need one
# node call, not one each. Another process's (or a native connect's) new password makes ours fail: set a new one.
_passwords: dict[str, tuple[ConsoleDescriptor, float]] = {}
_locks: dict[str, asyncio.Lock] = {}
GUEST_TIMEOUT_S = 30.0  # a guest's display that does not finish its handshake in this time is unavailable


async def _guest_endpoint(desktop: Desktop, username: str, fresh: bool) -> ConsoleDescriptor:
    cached = _passwords.get(desktop.id)
    if cached is not None and not fresh and cached[1] > time.monotonic():
        return cached[0]

    def issue() -> ConsoleDescriptor:
        with session_scope() as session:
            return consoles.issue_for_desktop(session, desktop, Protocol.VNC, username=username)

    desc = await run_in_threadpool(issue)
    _passwords[desktop.id] = (desc, time.monotonic() + max(1, get_settings().ticket_seconds - 10))
    return desc


async def connect_guest(desktop: Desktop, username: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A TCP connection to the desktop's VNC display, authenticated (the RFB security phase done). One handshake
    at a time per desktop in a process: they share the password (one node call for many consoles). A password the
    guest refuses (replaced since by another process or a native connect) is forgotten and a new one set."""
    async with _locks.setdefault(desktop.id, asyncio.Lock()):
        for attempt in range(3):
            desc = await _guest_endpoint(desktop, username, fresh=attempt > 0)
            reader, writer = await asyncio.wait_for(asyncio.open_connection(desc.host, desc.port), GUEST_TIMEOUT_S)
            try:
                await asyncio.wait_for(guest_handshake(reader, writer, desc.password or ""), GUEST_TIMEOUT_S)
                return reader, writer
            except AuthFailed:
                writer.close()
                _passwords.pop(desktop.id, None)
            except BaseException:
                writer.close()
                raise
    raise AuthFailed("the guest refused every password the node set")


# ---- RFB on the browser's side ---------------------------------------------------------------------------------------
class _Inbound:
    """The browser's bytes as a stream (WebSocket messages do not follow RFB's message boundaries)."""

    def __init__(self, websocket: WebSocket) -> None:
        self.websocket = websocket
        self.buffer = b""

    async def read(self, n: int) -> bytes:
        while len(self.buffer) < n:
            self.buffer += await self.websocket.receive_bytes()
        out, self.buffer = self.buffer[:n], self.buffer[n:]
        return out


async def browser_handshake(inbound: _Inbound) -> None:
    """Version and security with noVNC: no authentication (the ticket was)."""
    await inbound.websocket.send_bytes(RFB_VERSION)
    version = await inbound.read(12)
    if version not in (b"RFB 003.008\n", b"RFB 003.007\n"):
        raise RfbError(f"the browser speaks {version!r}; the console needs RFB 3.7 or 3.8")
    await inbound.websocket.send_bytes(b"\x01\x01")  # one security type: None
    if await inbound.read(1) != b"\x01":
        raise RfbError("the browser chose a security type that was not offered")
    if version == b"RFB 003.008\n":
        await inbound.websocket.send_bytes(b"\x00\x00\x00\x00")


class InputWatch:
    """Follows the client-to-server RFB messages to tell input (keys, pointer, clipboard) from the viewer's own
    traffic (update requests), for the idle timeout. An unknown message type stops the parsing: from then on any
    traffic counts as input (never closes a console in use)."""

    INPUT = {4, 5, 6, 255}  # KeyEvent, PointerEvent, ClientCutText, QEMU (extended key event)
    FIXED = {0: 20, 3: 10, 4: 8, 5: 6, 150: 10, 250: 4}

    def __init__(self, skip: int = 0) -> None:
        self.skip = skip  # bytes that are not client messages (the ClientInit before them)
        self.buffer = b""
        self.lost = False
        self.last_input = time.monotonic()

    def _length(self) -> int | None:
        data = self.buffer
        kind = data[0]
        if kind in self.FIXED:
            return self.FIXED[kind]
        if kind == 2 and len(data) >= 4:  # SetEncodings
            return 4 + 4 * struct.unpack(">H", data[2:4])[0]
        if kind == 6 and len(data) >= 8:  # ClientCutText (a negative length: extended clipboard)
            return 8 + abs(struct.unpack(">i", data[4:8])[0])
        if kind == 251 and len(data) >= 8:  # SetDesktopSize
            return 8 + 16 * data[6]
        if kind == 255 and len(data) >= 2:
            return 12 if data[1] == 0 else -1
        if kind in (2, 6, 251, 255):
            return None  # need more bytes
        return -1

    def feed(self, data: bytes) -> None:
        if self.lost:
            self.last_input = time.monotonic()
            return
        if self.skip:
            data, self.skip = data[self.skip:], max(0, self.skip - len(data))
        self.buffer += data
        while self.buffer:
            length = self._length()
            if length is None or (length > 0 and len(self.buffer) < length):
                return
            if length < 0:
                self.lost, self.buffer = True, b""
                self.last_input = time.monotonic()
                return
            if self.buffer[0] in self.INPUT:
                self.last_input = time.monotonic()
            self.buffer = self.buffer[length:]


# ---- the live consoles of this process, and the forced disconnects ---------------------------------------------------
_live: dict[str, asyncio.Event] = {}  # console id -> set when an administrator asked to close it
_poller: asyncio.Task | None = None


def _requested(ids: list[str]) -> list[str]:
    with session_scope() as session:
        return list(session.scalars(select(BrowserConsole.id).where(
            BrowserConsole.id.in_(ids), BrowserConsole.close_requested_at.is_not(None))))


async def _poll_close_requests() -> None:
    global _poller
    try:
        while _live:
            await asyncio.sleep(POLL_SECONDS)
            ids = list(_live)
            if not ids:
                break
            try:
                for console_id in await run_in_threadpool(_requested, ids):
                    if console_id in _live:
                        _live[console_id].set()
            except Exception:  # the database is away for a moment: try again next round
                log.exception("polling the browser consoles' close requests failed")
    finally:
        _poller = None


def _register(console_id: str) -> asyncio.Event:
    global _poller
    event = _live[console_id] = asyncio.Event()
    if _poller is None:
        _poller = asyncio.get_running_loop().create_task(_poll_close_requests())
    return event


# ---- the proxy -------------------------------------------------------------------------------------------------------
async def proxy(websocket: WebSocket) -> None:
    """The WebSocket route: admit with a ticket, then relay RFB between the browser and the guest."""
    subprotocols = websocket.scope.get("subprotocols") or []
    await websocket.accept(subprotocol="binary" if "binary" in subprotocols else None)
    admitted = await run_in_threadpool(admit, websocket.query_params.get("ticket", ""))
    if isinstance(admitted, str):
        await websocket.close(CLOSE_REFUSED, admitted)
        return
    reason = "the browser left"
    closed_by = _register(admitted.console_id)
    writer = None
    try:
        try:
            reader, writer = await connect_guest(admitted.desktop, admitted.user.username)
        except (OSError, RfbError, asyncio.IncompleteReadError, asyncio.TimeoutError, VdiError) as exc:
            reason = f"the desktop's display could not be reached ({exc})"
            await websocket.close(CLOSE_UNAVAILABLE, "the desktop's display could not be reached")
            return
        inbound = _Inbound(websocket)
        try:
            await browser_handshake(inbound)
        except RfbError as exc:
            reason = str(exc)
            await websocket.close(CLOSE_REFUSED, str(exc)[:120])
            return
        reason = await _relay(websocket, inbound, reader, writer, closed_by)
    except WebSocketDisconnect:
        pass
    finally:
        _live.pop(admitted.console_id, None)
        if writer is not None:
            writer.close()
        await run_in_threadpool(_closed, admitted, reason)


async def _relay(websocket: WebSocket, inbound: _Inbound, reader: asyncio.StreamReader,
                 writer: asyncio.StreamWriter, closed_by: asyncio.Event) -> str:
    """Relay until one side leaves or a limit is reached; why it ended."""
    settings = get_settings()
    watch = InputWatch(skip=1)  # the browser's ClientInit (its shared flag) comes first
    started = time.monotonic()

    async def upstream() -> tuple[str, int | None]:
        data = inbound.buffer  # the browser's ClientInit may have come with its security choice
        inbound.buffer = b""
        while True:
            if data:
                watch.feed(data)
                writer.write(data)
                await writer.drain()
            try:
                data = await websocket.receive_bytes()
            except (WebSocketDisconnect, RuntimeError):
                return "the browser left", None

    async def downstream() -> tuple[str, int | None]:
        while True:
            data = await reader.read(1 << 16)
            if not data:
                return "the desktop's display closed the connection", CLOSE_UNAVAILABLE
            await websocket.send_bytes(data)

    async def limits() -> tuple[str, int | None]:
        while True:
            await asyncio.sleep(1)
            now = time.monotonic()
            if now - watch.last_input > settings.console_idle_seconds:
                return f"idle for {settings.console_idle_seconds} s", CLOSE_LIMIT
            if now - started > settings.console_max_seconds:
                return f"open for the maximum of {settings.console_max_seconds} s", CLOSE_LIMIT

    async def administrator() -> tuple[str, int | None]:
        await closed_by.wait()
        return "disconnected by an administrator", CLOSE_ADMIN

    tasks = {asyncio.ensure_future(c) for c in (upstream(), downstream(), limits(), administrator())}
    done, pending = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    for task in pending:
        task.cancel()
    for task in pending:
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task
    task = done.pop()
    try:
        reason, code = task.result()
    except (OSError, ConnectionError, WebSocketDisconnect, RuntimeError) as exc:
        reason, code = f"connection lost ({exc.__class__.__name__})", CLOSE_UNAVAILABLE
    if code is not None:
        with contextlib.suppress(Exception):
            await websocket.close(code, reason[:120])
    return reason
