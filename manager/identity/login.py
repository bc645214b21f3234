"""Password login: local accounts (pbkdf2 hashes, e.g. the bootstrap admin@local) and Active Directory accounts
(an LDAP simple bind AS THE USER, by the DN a service-account search found).

- The login name may be `user`, `user@domain` (UPN or user@realm) or `DOMAIN\\user`. A bare name or
  `@local` is tried against local accounts first; everything else goes to the directory, if one is configured.
- The user's text only ever reaches LDAP inside an escaped filter; the bind uses the DN found, never the text,
  so `*`, `)(`, `\\00` and friends match nothing.
- Unknown user and wrong password give the same 401 message. A disabled account is 403, but only once the
  password was right (AD itself reports "disabled" only then), so no guess learns that an account exists.
- Brute force: failures are recorded in login_attempts, in their own transaction (the request's is rolled back
  by the 401), under the canonical account (`bob`, `bob@local`, `LOCAL\\bob` and `BOB` are one account) and the
  client address (the socket's peer, or X-Forwarded-For only from VDI_TRUSTED_PROXIES). Two limits, each a 429
  with the seconds to wait:
  * per (account, address): after VDI_LOGIN_MAX_FAILURES_PER_LOGIN (5) failures that address waits
    window_seconds (300), doubling with every further failure up to max_lock_seconds (3600). The account is not
    locked for other addresses: an attacker cannot lock the real user out by failing from elsewhere, and each
    address they use starts at 5 guesses and then backs off;
  * per address: VDI_LOGIN_MAX_FAILURES_PER_ADDRESS (20) failures over all accounts within the window, so one
    address cannot try a few passwords on every account.
  A successful login clears the failures of that account from that address only (the attacker's elsewhere stay).
  Keycloak and oVirt's internal domain lock the account itself after N failures (from anywhere), which lets
  anyone who knows a user name lock that user out; we key the lock by address instead and leave account lockout
  to the directory's own policy.
"""
from __future__ import annotations

import datetime as dt
import math

from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from core.enums import PrincipalSource
from core.errors import Forbidden, NotAuthenticated, TooManyRequests, Unavailable
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
# How long failures count towards the backoff (and are kept), and how many of them are read to compute it.
BACKOFF_MEMORY = dt.timedelta(days=1)
BACKOFF_COUNTED = 64
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


def account_key(session: Session, login: str, directory_settings: DirectorySettings | None = None) -> str:
    """The account a login name means, however it is written: 'user@local' for a local account, 'user@<netbios
    domain>' for the directory's (`user`, `user@realm`, `user@CORP`, `CORP\\user`), 'user@<domain>' for a domain
    nobody knows. A UPN whose prefix differs from the sAMAccountName is its own key (no directory lookup here)."""
    username, domain = split_login(login.strip())
    name = username.lower()
    if domain is not None and domain.lower() == LOCAL_DOMAIN:
        return _login_key(f"{name}@{LOCAL_DOMAIN}")
    if domain is None and username.isprintable() and _local_user(session, username) is not None:
        return _login_key(f"{name}@{LOCAL_DOMAIN}")
    settings = directory_settings
    if settings is None:
        try:
            settings = get_directory_settings()
        except Unavailable:
            settings = None
    if settings is not None and settings.configured and (domain is None or settings.matches_domain(domain)):
        return _login_key(f"{name}@{settings.netbios_domain.lower()}")
    return _login_key(f"{name}@{(domain or LOCAL_DOMAIN).lower()}")


def _throttled_wait(session: Session, account: str, client_address: str, settings: LoginSettings,
                    now: dt.datetime) -> float:
    """Seconds this address must wait before trying this account again (0: it may try now)."""
    waits = [0.0]
    window = dt.timedelta(seconds=settings.window_seconds)
    pair = list(session.scalars(select(LoginAttempt.created_at).where(
        LoginAttempt.login == account, LoginAttempt.client_address == client_address[:255],
        LoginAttempt.succeeded.is_(False), LoginAttempt.created_at > now - BACKOFF_MEMORY)
        .order_by(LoginAttempt.created_at.desc()).limit(BACKOFF_COUNTED)))
    over = len(pair) - settings.max_failures_per_login
    if over >= 0:  # window, 2 x window, 4 x window ... after the latest failure, up to max_lock_seconds
        lock = min(settings.window_seconds * 2 ** over, settings.max_lock_seconds)
        waits.append((pair[0] + dt.timedelta(seconds=lock) - now).total_seconds())
    if client_address:
        limit = settings.max_failures_per_address
        times = list(session.scalars(select(LoginAttempt.created_at).where(
            LoginAttempt.client_address == client_address[:255], LoginAttempt.succeeded.is_(False),
            LoginAttempt.created_at > now - window).order_by(LoginAttempt.created_at.desc()).limit(limit)))
        if len(times) >= limit:
            # the limit-th most recent failure has to leave the window before one more try is allowed
            waits.append((times[-1] + window - now).total_seconds())
    return max(waits)


def check_throttle(session: Session, account: str, client_address: str, settings: LoginSettings | None = None,
                   now: dt.datetime | None = None) -> None:
    """Raise LoginThrottled when this address failed too often on this account, or on any, lately. `account`:
    account_key()'s canonical name."""
    wait = _throttled_wait(session, account, client_address, settings or get_login_settings(), now or utcnow())
    if wait > 0:
        raise LoginThrottled(max(1, math.ceil(wait)))


def record_failure(account: str, client_address: str) -> None:
    """Committed on its own: the request's transaction is rolled back by the error that follows. Also drops
    failures older than a day, which no backoff needs (names that never log in would otherwise pile up)."""
    with db.session_scope() as session:
        prune_attempts(session)
        session.add(LoginAttempt(login=account, client_address=client_address[:255], succeeded=False))


def clear_failures(session: Session, account: str, client_address: str) -> None:
    """A right password from this address: its failures on this account no longer count (an attacker's failures
    from other addresses do)."""
    session.execute(delete(LoginAttempt).where(LoginAttempt.login == account,
                                               LoginAttempt.client_address == client_address[:255]))


def prune_attempts(session: Session, older_than: dt.timedelta | None = None) -> int:
    """Drop attempts no window can need any more."""
    older_than = older_than or BACKOFF_MEMORY
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
    account = account_key(session, login, directory_settings)
    check_throttle(session, account, client_address)
    username, domain = split_login(login)
    local = None
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
        record_failure(account, client_address)
        emit_refusal(login, client_address, "wrong user name or password", code="user.login_failed",
                     user_id=local.id if local is not None else None)
        raise
    except Forbidden as exc:
        emit_refusal(login, client_address, exc.message)
        raise
    clear_failures(session, account, client_address)
    return user


def emit_refusal(login: str, client_address: str, reason: str, *, code: str = "user.login_refused",
                 user_id: str | None = None) -> None:
    """A failed login (wrong credentials: user.login_failed) or a refused one (right password, account disabled,
    expired or locked: user.login_refused) is an event, in its own transaction (the login's rolls back). Never the
    password."""
    with db.session_scope() as own:
        emit(own, code, f"login {login[:100]!r} from {client_address or 'unknown'} refused: {reason}",
             actor="system", user_id=user_id)

