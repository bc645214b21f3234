"""Users, groups (local or synced from Active Directory), roles, entitlements, logins and tokens."""
from __future__ import annotations

import datetime as dt

from sqlalchemy import (BigInteger, Boolean, CheckConstraint, ForeignKey, Index, Integer, String, Text,
                        UniqueConstraint, text, false as sa_false)
from sqlalchemy.orm import Mapped, mapped_column

from core.enums import PrincipalSource, Role, SessionState
from manager.models.base import Base, CreatedMixin, IdMixin, UTCDateTime, enum_type


class User(IdMixin, CreatedMixin, Base):
    __tablename__ = "users"
    __table_args__ = (UniqueConstraint("username", "domain"),)

    username: Mapped[str] = mapped_column(String(255))  # sAMAccountName for AD users
    domain: Mapped[str] = mapped_column(String(255), default="local")
    upn: Mapped[str] = mapped_column(String(255), default="", index=True)
    display_name: Mapped[str] = mapped_column(String(255), default="")
    first_name: Mapped[str] = mapped_column(String(255), default="")
    last_name: Mapped[str] = mapped_column(String(255), default="")
    email: Mapped[str] = mapped_column(String(255), default="")
    department: Mapped[str] = mapped_column(String(255), default="")
    source: Mapped[PrincipalSource] = mapped_column(enum_type(PrincipalSource), default=PrincipalSource.LOCAL)
    object_guid: Mapped[str | None] = mapped_column(String(64), unique=True, nullable=True)  # AD's stable key
    dn: Mapped[str] = mapped_column(String(1024), default="")
    enabled: Mapped[bool] = mapped_column(Boolean, default=True)
    # Local accounts only (pbkdf2); AD users authenticate by LDAP bind and have none.
    password_hash: Mapped[str] = mapped_column(String(255), default="")
    usn_changed: Mapped[int] = mapped_column(BigInteger, default=0)
    synced_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    deleted_in_directory: Mapped[bool] = mapped_column(Boolean, default=False)
    # The portal's remembered choices: how Connect opens a desktop (native | browser) and whether a user with
    # exactly one desktop is connected to it as the portal opens.
    console_client: Mapped[str] = mapped_column(String(16), default="native", server_default="native")
    auto_connect: Mapped[bool] = mapped_column(Boolean, default=False, server_default=sa_false())


class Group(IdMixin, CreatedMixin, Base):
    __tablename__ = "groups"
    __table_args__ = (UniqueConstraint("name", "domain"),)

    name: Mapped[str] = mapped_column(String(255))
    domain: Mapped[str] = mapped_column(String(255), default="local")
    description: Mapped[str] = mapped_column(Text, default="")
    source: Mapped[PrincipalSource] = mapped_column(enum_type(PrincipalSource), default=PrincipalSource.LOCAL)
    object_guid: Mapped[str | None] = mapped_column(String(64), unique=True, nullable=True)
    dn: Mapped[str] = mapped_column(String(1024), default="")
    usn_changed: Mapped[int] = mapped_column(BigInteger, default=0)
    synced_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    deleted_in_directory: Mapped[bool] = mapped_column(Boolean, default=False)


class UserGroupMembership(Base):
    """Direct membership of a user in a group (nested membership is derived through GroupGroupMembership)."""

    __tablename__ = "user_group_memberships"

    user_id: Mapped[str] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), primary_key=True)
    group_id: Mapped[str] = mapped_column(ForeignKey("groups.id", ondelete="CASCADE"), primary_key=True, index=True)


class GroupGroupMembership(Base):
    """`child` is a direct member of `parent`. Cycles are allowed (AD allows them); readers must be cycle-safe."""

    __tablename__ = "group_group_memberships"

    parent_id: Mapped[str] = mapped_column(ForeignKey("groups.id", ondelete="CASCADE"), primary_key=True)
    child_id: Mapped[str] = mapped_column(ForeignKey("groups.id", ondelete="CASCADE"), primary_key=True, index=True)


class RoleAssignment(IdMixin, CreatedMixin, Base):
    """A role held by a user or by every member of a group (e.g. AD group vdi-admins -> SuperUser)."""

    __tablename__ = "role_assignments"
    __table_args__ = (
        CheckConstraint("(user_id IS NULL) <> (group_id IS NULL)", name="one_principal"),
    )

    user_id: Mapped[str | None] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), nullable=True, index=True)
    group_id: Mapped[str | None] = mapped_column(ForeignKey("groups.id", ondelete="CASCADE"), nullable=True,
                                                 index=True)
    role: Mapped[Role] = mapped_column(enum_type(Role))
    # manual | directory (made by the AD group -> role mapping; the directory sync adds and removes those)
    source: Mapped[str] = mapped_column(String(32), default="manual", server_default="manual")


class Entitlement(IdMixin, CreatedMixin, Base):
    """Who (a user or a group, nested members included) may use which pool or desktop."""

    __tablename__ = "entitlements"
    __table_args__ = (
        CheckConstraint("(user_id IS NULL) <> (group_id IS NULL)", name="one_principal"),
        CheckConstraint("(pool_id IS NULL) <> (desktop_id IS NULL)", name="one_target"),
    )

    user_id: Mapped[str | None] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), nullable=True, index=True)
    group_id: Mapped[str | None] = mapped_column(ForeignKey("groups.id", ondelete="CASCADE"), nullable=True,
                                                 index=True)
    pool_id: Mapped[str | None] = mapped_column(ForeignKey("pools.id", ondelete="CASCADE"), nullable=True, index=True)
    desktop_id: Mapped[str | None] = mapped_column(ForeignKey("desktops.id", ondelete="CASCADE"), nullable=True,
                                                   index=True)
    source: Mapped[str] = mapped_column(String(32), default="manual")  # manual | directory


class Assignment(IdMixin, CreatedMixin, Base):
    """A desktop attached to a user: dedicated (admin-assigned, possibly several users: shared) or from a pool."""

    __tablename__ = "assignments"
    __table_args__ = (UniqueConstraint("desktop_id", "user_id"),)

    desktop_id: Mapped[str] = mapped_column(ForeignKey("desktops.id", ondelete="CASCADE"), index=True)
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    kind: Mapped[str] = mapped_column(String(16), default="dedicated")  # dedicated | pool
    until: Mapped[dt.datetime | None] = mapped_column(UTCDateTime(), nullable=True)


class DesktopSession(IdMixin, CreatedMixin, Base):
    """A user's console session on a desktop, as the broker tracks it."""

    __tablename__ = "desktop_sessions"

    desktop_id: Mapped[str] = mapped_column(ForeignKey("desktops.id", ondelete="CASCADE"), index=True)
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    pool_id: Mapped[str | None] = mapped_column(ForeignKey("pools.id", ondelete="SET NULL"), nullable=True)
    protocol: Mapped[str] = mapped_column(String(16), default="spice")
    client_address: Mapped[str] = mapped_column(String(255), default="")
    state: Mapped[SessionState] = mapped_column(enum_type(SessionState), default=SessionState.CONNECTED, index=True)
    connected_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    disconnected_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    ended_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    ticket_expires_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime(), nullable=True)


class BrowserConsole(IdMixin, CreatedMixin, Base):
    """One browser console (manager.console_proxy): its single-use ticket (only the SHA-256 is stored), bound to a
    user and a desktop, then the proxied connection it opened. `opened_at` set = the ticket is spent;
    `close_requested_at` set = an administrator asked every manager process to close it."""

    __tablename__ = "browser_consoles"

    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    desktop_id: Mapped[str] = mapped_column(ForeignKey("desktops.id", ondelete="CASCADE"), index=True)
    session_id: Mapped[str | None] = mapped_column(ForeignKey("desktop_sessions.id", ondelete="SET NULL"),
                                                   nullable=True)  # none for an administrator's console
    expires_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())
    opened_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    closed_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    close_requested_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime(), nullable=True)


class ApiToken(IdMixin, CreatedMixin, Base):
    """A bearer token (kind api, for scripts) or a browser session (kind session); only its SHA-256 is stored.
    Every token expires (manager.auth bounds each kind's life by configuration)."""

    __tablename__ = "api_tokens"

    user_id: Mapped[str] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(255), default="")
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    kind: Mapped[str] = mapped_column(String(16), default="api")  # api | session (browser cookie)
    expires_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    last_used_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    client_address: Mapped[str] = mapped_column(String(255), default="")
    # The credential that minted this token without the password again: it dies with it (logout, revocation).
    parent_id: Mapped[str | None] = mapped_column(ForeignKey("api_tokens.id", ondelete="CASCADE"), nullable=True,
                                                  index=True)


class LoginAttempt(IdMixin, CreatedMixin, Base):
    """Failed logins, for brute-force protection (per login name and per client address)."""

    __tablename__ = "login_attempts"

    login: Mapped[str] = mapped_column(String(255), index=True)
    client_address: Mapped[str] = mapped_column(String(255), default="", index=True)
    succeeded: Mapped[bool] = mapped_column(Boolean, default=False)


class DirectorySyncState(IdMixin, Base):
    """Where the last sync of a directory stopped (uSNChanged high-water mark)."""

    __tablename__ = "directory_sync_state"

    directory: Mapped[str] = mapped_column(String(255), unique=True)
    highest_usn: Mapped[int] = mapped_column(BigInteger, default=0)
    invocation_id: Mapped[str] = mapped_column(String(64), default="")
    last_full_sync_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    last_sync_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    last_error: Mapped[str] = mapped_column(Text, default="")
    runs: Mapped[int] = mapped_column(Integer, default=0)


Index("ix_login_attempts_created_at", LoginAttempt.created_at)


# One role per principal, one entitlement per (principal, target): a unique constraint over columns of which two are
# always NULL never fires (NULLs are distinct), so each principal/target kind gets its own partial unique index, the
# same on Postgres and SQLite (migration 0011). A repeated or concurrent identical create is a 409.
def _unique_where(name: str, where: str, *columns) -> Index:
    return Index(name, *columns, unique=True, postgresql_where=text(where), sqlite_where=text(where))


ROLE_UNIQUE_INDEXES = (
    _unique_where("uq_role_assignments_user_role", "user_id IS NOT NULL", RoleAssignment.user_id, RoleAssignment.role),
    _unique_where("uq_role_assignments_group_role", "group_id IS NOT NULL", RoleAssignment.group_id,
                  RoleAssignment.role),
)
ENTITLEMENT_UNIQUE_INDEXES = tuple(
    _unique_where(f"uq_entitlements_{who}_{target}", f"{who}_id IS NOT NULL AND {target}_id IS NOT NULL",
                  getattr(Entitlement, f"{who}_id"), getattr(Entitlement, f"{target}_id"))
    for who in ("user", "group") for target in ("pool", "desktop"))
