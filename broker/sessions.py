"""Console sessions as the broker tracks them: who is on which desktop, from where, since when.

A session is what the hosts observe, not what a client says (core.enums.SessionState): a connect opens it PENDING
(a ticket was issued); the host's graphics events (hypervisor_node.consoles, POST /nodes/{name}/console-events)
make it CONNECTED when a SPICE or VNC client attaches and DISCONNECTED when the last one leaves; a pending session
whose ticket expired unused counts as disconnected from that moment (expire_pending). RDP goes to the guest itself,
which the host cannot see: an RDP session is CONNECTED from its connect, as the client reports it."""
from __future__ import annotations

import datetime as dt

from dataclasses import dataclass

from sqlalchemy import Select, and_, bindparam, case, insert, select, update
from sqlalchemy.orm import Session

from core.enums import Protocol, SessionState
from core.errors import Conflict, NotFound
from core.ids import new_id
from event_manager.service import emit
from manager.models import Desktop, DesktopSession, User, utcnow

LIVE = (SessionState.PENDING, SessionState.CONNECTED, SessionState.DISCONNECTED)
# Protocols whose clients attach to the host's display (QEMU), so the host reports them coming and going.
OBSERVED = (Protocol.SPICE.value, Protocol.VNC.value)
# How lists of sessions are ordered unless asked otherwise, and what they may be sorted by.
NEWEST_FIRST = (DesktopSession.created_at.desc(), DesktopSession.id)
SORTABLE = {"connected_at": DesktopSession.connected_at, "state": DesktopSession.state}


def query_sessions(*, state: SessionState | None = None, user_id: str | None = None, desktop_id: str | None = None,
                   pool_id: str | None = None) -> Select:
    """Console sessions matching the given fields exactly (GET /sessions, a desktop's page), unordered: the
    caller pages it with NEWEST_FIRST or a SORTABLE column."""
    stmt = select(DesktopSession)
    for column, value in ((DesktopSession.state, state), (DesktopSession.user_id, user_id),
                          (DesktopSession.desktop_id, desktop_id), (DesktopSession.pool_id, pool_id)):
        if value is not None:
            stmt = stmt.where(column == value)
    return stmt


def open_session(session: Session, *, user_id: str, desktop_id: str, pool_id: str | None, protocol: str,
                 client_address: str, ticket_expires_at: dt.datetime | None,
                 now: dt.datetime | None = None, fresh: bool = False) -> str:
    """Record a connect; returns the session's id. The user's live session on this desktop is reused (a
    reconnect), else a new one is inserted. `fresh` says the desktop was just assigned, so there is no earlier
    session to look for. The session is PENDING until the host reports a client attached (a reused session whose
    client is still attached stays CONNECTED); an RDP session is CONNECTED at once (see the module)."""
    now = now or utcnow()
    observed = protocol in OBSERVED
    if not fresh:
        reconnected = session.connection().execute(_REUSE_LIVE, {
            "user": user_id, "desktop": desktop_id, "p_protocol": protocol, "p_client": client_address,
            "p_expires": ticket_expires_at, "p_state": SessionState.PENDING if observed else SessionState.CONNECTED,
            "p_now": None if observed else now}).scalar()
        if reconnected is not None:
            return reconnected
    session_id = new_id()
    session.connection().execute(_INSERT_SESSION, {
        "id": session_id, "user_id": user_id, "desktop_id": desktop_id, "pool_id": pool_id, "created_at": now,
        "state": SessionState.PENDING if observed else SessionState.CONNECTED, "protocol": protocol,
        "client_address": client_address, "connected_at": None if observed else now, "disconnected_at": None,
        "ticket_expires_at": ticket_expires_at})
    return session_id


# Inline: no RETURNING (the id is ours), so a connect can send it without waiting (db.commit_in_route pipelined).
_INSERT_SESSION = insert(DesktopSession.__table__).inline()

# A reconnect takes over the user's newest live session on the desktop: a new ticket, PENDING again unless a client
# of theirs is still attached as the host saw it (then it stays CONNECTED, since when it was).
_ATTACHED = and_(DesktopSession.state == SessionState.CONNECTED, DesktopSession.protocol.in_(OBSERVED))
_REUSE_LIVE = update(DesktopSession.__table__).where(DesktopSession.id == select(DesktopSession.id).where(
    DesktopSession.user_id == bindparam("user"), DesktopSession.desktop_id == bindparam("desktop"),
    DesktopSession.state.in_(LIVE)).order_by(DesktopSession.created_at.desc()).limit(1).scalar_subquery()) \
    .values(protocol=bindparam("p_protocol"), client_address=bindparam("p_client"),
            ticket_expires_at=bindparam("p_expires"),
            state=case((_ATTACHED, DesktopSession.state), else_=bindparam("p_state", type_=DesktopSession.state.type)),
            connected_at=case((_ATTACHED, DesktopSession.connected_at),
                              else_=bindparam("p_now", type_=DesktopSession.connected_at.type)),
            disconnected_at=None) \
    .returning(DesktopSession.id)


def ticket_renewed(row: DesktopSession, expires_at: dt.datetime | None) -> None:
    """A new ticket for a live session (a fresh console file): a session that went disconnected waits for a client
    again (PENDING), so the pool's disconnect policy does not act on it while the user opens the new file."""
    row.ticket_expires_at = expires_at
    if row.state == SessionState.DISCONNECTED and row.protocol in OBSERVED:
        row.state, row.disconnected_at = SessionState.PENDING, None


def owned_session(session: Session, session_id: str, user_id: str) -> DesktopSession:
    """The user's own session; another user's is reported as missing (no existence leak)."""
    row = session.get(DesktopSession, session_id)
    if row is None or row.user_id != user_id:
        raise NotFound(kind="session", id=session_id)
    return row


def mark_disconnected(session: Session, row: DesktopSession, now: dt.datetime | None = None) -> None:
    """The client went away; the desktop stays the user's (they can reconnect)."""
    if row.state == SessionState.ENDED:
        raise Conflict(f"session {row.id} has already ended; connect again")
    row.state = SessionState.DISCONNECTED
    row.disconnected_at = now or utcnow()
    session.flush()


def end_sessions_of_desktop(session: Session, desktop_id: str, now: dt.datetime | None = None) -> int:
    """End every live session on a desktop (logoff, lease expiry, reclaim). Returns how many ended."""
    now = now or utcnow()
    return session.execute(
        update(DesktopSession).where(DesktopSession.desktop_id == desktop_id, DesktopSession.state.in_(LIVE))
        .values(state=SessionState.ENDED, ended_at=now).execution_options(synchronize_session=False)).rowcount


# ---- what the hosts observe: console clients attaching and leaving ---------------------------------------------
@dataclass(frozen=True)
class ConsoleEvent:
    """A host's report that the first console client attached to a desktop's display (attached) or the last one
    left it (not attached), at `at` (the host's clock)."""

    desktop_id: str
    attached: bool
    at: dt.datetime
    protocol: str = ""
    client: str = ""  # the client's address as the host saw it


def record_console_events(session: Session, host_id: str, host_name: str, events: list[ConsoleEvent]) -> dict[str, int]:
    """Apply a host's console events, in order, to the sessions of the desktops that host runs: an attach makes the
    desktop's newest pending or disconnected session CONNECTED, a detach makes its connected session DISCONNECTED.
    Events about a desktop the host does not run are ignored (a node speaks only for its own desktops), as are
    events with no live session to change (an administrator's console). One event per change. Returns counts."""
    ids = {e.desktop_id for e in events}
    own = {row.id: row.name for row in session.execute(select(Desktop.id, Desktop.name).where(
        Desktop.id.in_(ids), Desktop.host_id == host_id))} if ids else {}
    changed = ignored = 0
    for event in events:
        if event.desktop_id not in own:
            ignored += 1
            continue
        before = (SessionState.PENDING, SessionState.DISCONNECTED) if event.attached else (SessionState.CONNECTED,)
        newest = select(DesktopSession.id).where(
            DesktopSession.desktop_id == event.desktop_id, DesktopSession.state.in_(LIVE)) \
            .order_by(DesktopSession.created_at.desc()).limit(1).scalar_subquery()
        values = {"state": SessionState.CONNECTED, "connected_at": event.at, "disconnected_at": None} \
            if event.attached else {"state": SessionState.DISCONNECTED, "disconnected_at": event.at}
        row = session.execute(update(DesktopSession).where(DesktopSession.id == newest,
                                                            DesktopSession.state.in_(before))
                              .values(**values).returning(DesktopSession.id, DesktopSession.user_id)
                              .execution_options(synchronize_session=False)).first()
        if row is None:
            ignored += 1
            continue
        changed += 1
        user = session.execute(select(User.username, User.domain).where(User.id == row.user_id)).first()
        who = f"{user[0]}@{user[1]}" if user else row.user_id
        via = f" over {event.protocol}" if event.protocol else ""
        source = f" from {event.client}" if event.client else ""
        if event.attached:
            message = f"{who}'s console client attached to desktop {own[event.desktop_id]}{via}{source}"
        else:
            message = f"{who}'s console client left desktop {own[event.desktop_id]}; the session is disconnected"
        emit(session, "session.connected" if event.attached else "session.disconnected", message, actor=host_name,
             user_id=row.user_id, desktop_id=event.desktop_id, host_id=host_id, correlation_id=row.id)
    return {"changed": changed, "ignored": ignored}


def expire_pending(session: Session, now: dt.datetime | None = None) -> int:
    """Pending sessions whose ticket expired with no client attached count as disconnected since the expiry (so a
    pool's disconnect policy sees a desktop taken and never used). Returns how many changed."""
    now = now or utcnow()
    return session.execute(
        update(DesktopSession).where(DesktopSession.state == SessionState.PENDING,
                                     DesktopSession.ticket_expires_at.is_not(None),
                                     DesktopSession.ticket_expires_at < now)
        .values(state=SessionState.DISCONNECTED, disconnected_at=DesktopSession.ticket_expires_at)
        .execution_options(synchronize_session=False)).rowcount
