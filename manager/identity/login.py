"""Password login: local accounts (pbkdf2 hashes, e.g. the bootstrap admin@local) and Active Directory accounts
(an LDAP simple bind AS THE USER, by the DN a service-account search found).

- The login name may be `user`, `user@domain` (UPN or user@realm) or `DOMAIN\\user`. A bare name or
  `@local` is tried against local accounts first; everything else goes to the directory, if one is configured.
- The user's text only ever reaches LDAP inside an escaped filter; the bind uses the DN found, never the text,
  so `*`, `)(`, `\\00` and friends match nothing.
- Unknown user and wrong password give the same 401 message. A disabled account is 403, but only once the
  password was right (AD itself reports "disabled" only then), so no guess learns that an account exists.
- Brute force: failures are recorded in login_attempts, in their own transaction (the request's is rolled back
  by the 401). Too many failures for one login name, or from one client address, within the window -> 429
  with the seconds to wait. A successful login clears that login's failures.
"""
from __future__ import annotations

import datetime as dt
import math

from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from core.enums import PrincipalSource
from core.errors import Forbidden, NotAuthenticated, TooManyRequests
from event_manager.service import emit
from manager import db
from manager.auth import verify_password
from manager.identity.directory import BindOutcome, Directory, DirectoryUser, normalize_dn
from manager.identity.settings import (DirectorySettings, LoginSettings, get_directory_settings,
                                       get_login_settings)
from manager.models import Group, LoginAttempt, User, UserGroupMembership, utcnow

WRONG_CREDENTIALS = "wrong user name or password"
LOCAL_DOMAIN = "local"
_FORBIDDEN = {
    BindOutcome.DISABLED: "this account is disabled",
    BindOutcome.EXPIRED: "this account or its password has expired; change the password in Windows first",
    BindOutcome.LOCKED: "this account is locked out in the directory",
    BindOutcome.RESTRICTED: "this account may not log in from here or at this time",
}
# A pbkdf2 hash of a random password: checked when the login names no account, so both paths cost the same.
_DUMMY_HASH = "pbkdf2_sha256$120000$00000000000000000000000000000000$" + "0" * 64


class LoginThrottled(TooManyRequests):
    """429 with the wait in the body (retry_after) and in a Retry-After header."""

    def __init__(self, retry_after: int) -> None:
        super().__init__(retry_after=retry_after)
        self.extra = {"retry_after": retry_after}
        self.headers = {"Retry-After": str(retry_after)}


def split_login(login: str) -> tuple[str, str | None]:
    """'user', 'user@domain', 'DOMAIN\\user' -> (user, domain or None)."""
    if "\\" in login:
        domain, user = login.split("\\", 1)
        return user, domain
    if "@" in login:
        user, domain = login.rsplit("@", 1)
        return user, domain
    return login, None


# ---- brute-force protection ------------------------------------------------------------------------------
def _login_key(login: str) -> str:
    """The name failures are counted under: case-folded, control characters made visible (Postgres text
    cannot hold NUL, and no real account name contains one)."""
    visible = "".join(c if c.isprintable() else f"\\x{ord(c):02x}" for c in login.strip().lower())
    return visible[:255]


def check_throttle(session: Session, login: str, client_address: str, settings: LoginSettings | None = None,
                   now: dt.datetime | None = None) -> None:
    """Raise LoginThrottled when this login name or this client address failed too often lately."""
    settings = settings or get_login_settings()
    now = now or utcnow()
    since = now - dt.timedelta(seconds=settings.window_seconds)
    checks = [(LoginAttempt.login == _login_key(login), settings.max_failures_per_login)]
    if client_address:
        checks.append((LoginAttempt.client_address == client_address, settings.max_failures_per_address))
    waits = []
    for clause, limit in checks:
        times = list(session.scalars(select(LoginAttempt.created_at).where(
            clause, LoginAttempt.succeeded.is_(False), LoginAttempt.created_at > since)
            .order_by(LoginAttempt.created_at.desc()).limit(limit)))
        if len(times) >= limit:
            # the limit-th most recent failure has to leave the window before one more try is allowed
            waits.append((times[-1] + dt.timedelta(seconds=settings.window_seconds) - now).total_seconds())
    if waits:
        raise LoginThrottled(max(1, math.ceil(max(waits))))


def record_failure(login: str, client_address: str) -> None:
    """Committed on its own: the request's transaction is rolled back by the error that follows. Also drops
    failures older than a day, which no window needs (names that never log in would otherwise pile up)."""
    with db.session_scope() as session:
        prune_attempts(session)
        session.add(LoginAttempt(login=_login_key(login), client_address=client_address[:255], succeeded=False))


def clear_failures(session: Session, login: str) -> None:
    session.execute(delete(LoginAttempt).where(LoginAttempt.login == _login_key(login)))


def prune_attempts(session: Session, older_than: dt.timedelta = dt.timedelta(days=1)) -> int:
    """Drop attempts no window can need any more."""
    return session.execute(delete(LoginAttempt).where(LoginAttempt.created_at < utcnow() - older_than)).rowcount or 0


# ---- local accounts ---------------------------------------------------------------------------------------
def _local_user(session: Session, username: str) -> User | None:
    return session.scalar(select(User).where(func.lower(User.username) == username.lower(),
                                             User.domain == LOCAL_DOMAIN, User.source == PrincipalSource.LOCAL))


def _check_local(user: User | None, password: str) -> User:
    if user is None or not user.password_hash:
        verify_password(password, _DUMMY_HASH)
        raise NotAuthenticated(WRONG_CREDENTIALS)
    if not verify_password(password, user.password_hash):
        raise NotAuthenticated(WRONG_CREDENTIALS)
    if not user.enabled:
        raise Forbidden("this account is disabled")
    return user


# ---- directory accounts -------------------------------------------------------------------------------------
def upsert_directory_user(session: Session, found: DirectoryUser, domain: str) -> User:
    """Create or refresh the User row of a directory account (matched by objectGUID, so renames keep it),
    with its direct memberships in groups the database already knows. The full picture comes from the sync."""
    user = session.scalar(select(User).where(User.object_guid == found.guid))
    if user is None:
        stale = session.scalar(select(User).where(User.username == found.username, User.domain == domain))
        if stale is not None:  # a deleted-and-recreated account: the old row keeps its history, not the name
            stale.username = f"{found.username}~{(stale.object_guid or stale.id)[:8]}"
            session.flush()
        user = User(object_guid=found.guid, domain=domain, source=PrincipalSource.AD)
        session.add(user)
    user.username, user.upn, user.dn = found.username, found.upn, found.dn
    user.display_name, user.first_name, user.last_name = found.display_name, found.first_name, found.last_name
    user.email, user.department = found.email, found.department
    user.enabled, user.deleted_in_directory, user.synced_at = found.enabled, False, utcnow()
    session.flush()
    wanted = {normalize_dn(dn) for dn in found.member_of}
    known = {normalize_dn(g.dn): g.id for g in session.scalars(
        select(Group).where(Group.source == PrincipalSource.AD, Group.deleted_in_directory.is_(False)))
        if g.dn}
    want_ids = {known[dn] for dn in wanted if dn in known}
    have_ids = set(session.scalars(select(UserGroupMembership.group_id).where(UserGroupMembership.user_id == user.id)))
    if have_ids - want_ids:
        session.execute(delete(UserGroupMembership).where(UserGroupMembership.user_id == user.id,
                                                          UserGroupMembership.group_id.in_(have_ids - want_ids)))
    session.add_all(UserGroupMembership(user_id=user.id, group_id=g) for g in want_ids - have_ids)
    session.flush()
    return user


def _check_directory(session: Session, settings: DirectorySettings, username: str, domain: str | None,
                     password: str) -> User:
    directory = Directory(settings)
    with directory.service_connection() as conn:
        found = directory.find_user(conn, username, domain)
    if found is None:
        raise NotAuthenticated(WRONG_CREDENTIALS)
    outcome = directory.check_password(found.dn, password)
    if outcome == BindOutcome.WRONG_CREDENTIALS:
        raise NotAuthenticated(WRONG_CREDENTIALS)
    if outcome != BindOutcome.OK:
        raise Forbidden(_FORBIDDEN[outcome])
    if not found.enabled:  # the bind and the attribute disagree only mid-replication; trust "disabled"
        raise Forbidden(_FORBIDDEN[BindOutcome.DISABLED])
    return upsert_directory_user(session, found, settings.netbios_domain)


# ---- the entry point ---------------------------------------------------------------------------------------------
def authenticate_password(session: Session, login: str, password: str, *, client_address: str = "",
                          directory_settings: DirectorySettings | None = None) -> User:
    """Return the user whose credentials these are.

    Raises NotAuthenticated (401, the same message whichever part was wrong), Forbidden (403: disabled,
    expired or locked account, told only after a right password), LoginThrottled (429, too many failures)
    or Unavailable (503: the directory cannot be reached).
    """
    login = login.strip()
    check_throttle(session, login, client_address)
    username, domain = split_login(login)
    try:
        if not username or not password or not login.isprintable():
            raise NotAuthenticated(WRONG_CREDENTIALS)
        local = _local_user(session, username) if domain is None or domain.lower() == LOCAL_DOMAIN else None
        settings = directory_settings
        if local is None and (domain is None or domain.lower() != LOCAL_DOMAIN):
            settings = settings or get_directory_settings()
        if local is not None or settings is None or not settings.configured:
            user = _check_local(local, password)
        else:
            user = _check_directory(session, settings, username, domain, password)
    except NotAuthenticated:
        record_failure(login, client_address)
        raise
    except Forbidden as exc:
        emit_refusal(login, client_address, exc.message)
        raise
    clear_failures(session, login)
    return user


def emit_refusal(login: str, client_address: str, reason: str) -> None:
    """A refused but correctly authenticated login is worth an event (in its own transaction)."""
    with db.session_scope() as own:
        emit(own, "user.login_refused", f"login {login[:100]!r} from {client_address or 'unknown'} refused: {reason}",
             actor="system")

