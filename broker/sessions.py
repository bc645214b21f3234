"""Console sessions as the broker tracks them: who is on which desktop, from where, since when."""
from __future__ import annotations

import datetime as dt

from sqlalchemy import Select, bindparam, insert, select, update
from sqlalchemy.orm import Session

from core.enums import SessionState
from core.errors import Conflict, NotFound
from core.ids import new_id
from manager.models import DesktopSession, utcnow

LIVE = (SessionState.CONNECTED, SessionState.DISCONNECTED)
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
    session to look for."""
    now = now or utcnow()
    live = {"state": SessionState.CONNECTED, "protocol": protocol, "client_address": client_address,
            "connected_at": now, "disconnected_at": None, "ticket_expires_at": ticket_expires_at}
    if not fresh:
        # The columns to set are the keys of `live` (an UPDATE without .values() sets the parameters it is given).
        reconnected = session.connection().execute(_REUSE_LIVE, {"user": user_id, "desktop": desktop_id,
                                                                 **live}).scalar()
        if reconnected is not None:
            return reconnected
    session_id = new_id()
    session.connection().execute(_INSERT_SESSION, {
        "id": session_id, "user_id": user_id, "desktop_id": desktop_id, "pool_id": pool_id, "created_at": now,
        **live})
    return session_id


# Inline: no RETURNING (the id is ours), so a connect can send it without waiting (db.commit_in_route pipelined).
_INSERT_SESSION = insert(DesktopSession.__table__).inline()

# A reconnect takes over the user's newest live session on the desktop.
_REUSE_LIVE = update(DesktopSession.__table__).where(DesktopSession.id == select(DesktopSession.id).where(
    DesktopSession.user_id == bindparam("user"), DesktopSession.desktop_id == bindparam("desktop"),
    DesktopSession.state.in_(LIVE)).order_by(DesktopSession.created_at.desc()).limit(1).scalar_subquery()) \
    .returning(DesktopSession.id)


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
