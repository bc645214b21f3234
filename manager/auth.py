"""Who is asking, and may they? Every API route declares one permission with `require(...)`.

Authentication: `Authorization: Bearer <token>` (API tokens) or the `vdi_session` cookie (browser sessions).
Both are random secrets of which only the SHA-256 is stored (table api_tokens). Roles come from role
assignments on the user and on every group the user is in (nested groups included).

Every token's life is bounded by configuration, also for tokens made before a limit was lowered: a session lives
VDI_SESSION_HOURS (12) from its creation, an API token at most VDI_API_TOKEN_MAX_DAYS (90). A token minted by
another credential without the password again is that credential's child: it expires no later and is revoked with
it (a logout revokes what the session minted). A password change revokes the user's other tokens.
"""
from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Annotated

from fastapi import Depends, Request, Response
from sqlalchemy import bindparam, delete, event, or_, select, update
from sqlalchemy.orm import Session

from core.enums import Role
from core.errors import Forbidden, NotAuthenticated
from event_manager.service import emit
from manager.db import forget_on_rollback, request_session
from manager.identity.membership import user_groups_select
from manager.models import ApiToken, RoleAssignment, User, utcnow

SESSION_COOKIE = "vdi_session"
CSRF_HEADER = "x-csrf-token"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
PBKDF2_ITERATIONS = 120_000

# Permission families. "self" permissions are checked again against ownership by the routes that use them.
ALL_ADMIN = {
    "system:read", "hosts:read", "hosts:write", "storage:read", "storage:write", "templates:read",
    "templates:write", "desktops:read", "desktops:write", "desktops:power", "desktops:console", "pools:read",
    "pools:write", "users:read", "users:write", "entitlements:read", "entitlements:write", "events:read",
    "jobs:read", "jobs:write", "tags:read", "tags:write", "search:read", "directory:sync", "sessions:read",
    "alerts:write",
    "sessions:write", "notifications:write", "planner:read", "planner:run",
}
SELF_SERVICE = {"self:read", "self:connect", "bookmarks:own"}
ROLE_PERMISSIONS: dict[Role, set[str]] = {
    Role.SUPER_USER: ALL_ADMIN | SELF_SERVICE,
    Role.DESKTOP_ADMIN: (ALL_ADMIN - {"users:write", "directory:sync", "hosts:write", "storage:write"})
    | SELF_SERVICE,
    Role.HELP_DESK: {"system:read", "hosts:read", "storage:read", "templates:read", "desktops:read",
                     "desktops:power", "desktops:console", "pools:read", "users:read", "entitlements:read",
                     "events:read", "jobs:read", "tags:read", "search:read", "sessions:read", "sessions:write",
                     "planner:read"}
    | SELF_SERVICE,
    Role.USER: set(SELF_SERVICE),
}
ROLE_ORDER = [Role.SUPER_USER, Role.DESKTOP_ADMIN, Role.HELP_DESK, Role.USER]


# What every account holds (Role.USER is implied for anyone who can log in): checking these needs no role lookup.
EVERYONE = frozenset(ROLE_PERMISSIONS[Role.USER])


@dataclass
class Principal:
    """Who is asking. Roles are looked up on first use: a self-service call (connect, my desktops) never needs
    them, which saves a query on the broker's hot path."""

    user_id: str
    username: str
    domain: str
    load_roles: Callable[[], set[Role]] | None = field(default=None, repr=False)
    _roles: set[Role] | None = field(default=None, repr=False)
    # the credential this request presented: its id, kind (session | api) and when it expires
    token_id: str = ""
    token_kind: str = ""
    token_expires_at: dt.datetime | None = None

    @property
    def roles(self) -> set[Role]:
        if self._roles is None:
            self._roles = self.load_roles() if self.load_roles is not None else {Role.USER}
        return self._roles

    @property
    def name(self) -> str:
        return f"{self.username}@{self.domain}"

    @property
    def permissions(self) -> set[str]:
        out: set[str] = set()
        for role in self.roles:
            out |= ROLE_PERMISSIONS[role]
        return out

    def can(self, permission: str) -> bool:
        return permission in EVERYONE or permission in self.permissions

    @property
    def is_admin(self) -> bool:
        return bool(self.roles - {Role.USER})


# ---- secrets -------------------------------------------------------------------------------------
def hash_password(password: str) -> str:
    salt = secrets.token_hex(16)
    digest = hashlib.pbkdf2_hmac("sha256", password.encode(), bytes.fromhex(salt), PBKDF2_ITERATIONS).hex()
    return f"pbkdf2_sha256${PBKDF2_ITERATIONS}${salt}${digest}"


def verify_password(password: str, stored: str) -> bool:
    try:
        scheme, iterations, salt, digest = stored.split("$")
    except ValueError:
        return False
    if scheme != "pbkdf2_sha256":
        return False
    candidate = hashlib.pbkdf2_hmac("sha256", password.encode(), bytes.fromhex(salt), int(iterations)).hex()
    return hmac.compare_digest(candidate, digest)


def token_digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def token_lifetime_limit(kind: str) -> dt.timedelta:
    """The longest a token of this kind lives from its creation (VDI_SESSION_HOURS, VDI_API_TOKEN_MAX_DAYS)."""
    from manager.config import get_settings

    settings = get_settings()
    if kind == "session":
        return dt.timedelta(hours=settings.session_hours)
    return dt.timedelta(days=settings.api_token_max_days)


def issue_token(session: Session, user: User, *, name: str = "", kind: str = "api",
                lifetime: dt.timedelta | None = None, client_address: str = "", parent_id: str | None = None,
                not_after: dt.datetime | None = None) -> str:
    """Create a bearer token for `user`; returns the secret (shown once, never stored). It lives `lifetime`, at
    most (and by default) its kind's limit, and not past `not_after`. `parent_id`: the token it dies with."""
    limit = token_lifetime_limit(kind)
    expires_at = utcnow() + min(lifetime or limit, limit)
    if not_after is not None:
        expires_at = min(expires_at, not_after)
    secret = "vdi_" + secrets.token_urlsafe(32)
    session.add(ApiToken(user_id=user.id, name=name, kind=kind, token_hash=token_digest(secret),
                         expires_at=expires_at, client_address=client_address, parent_id=parent_id))
    session.flush()
    if kind != "session":  # a login is its own event (start_browser_session); never the secret
        emit(session, "user.token_created", f"{user.username}@{user.domain} created {kind} token {name[:100]!r}, "
             f"valid until {expires_at:%Y-%m-%d %H:%M} UTC" + (", bound to the session that asked" if parent_id
                                                               else ""),
             actor=f"{user.username}@{user.domain}", user_id=user.id)
    return secret


def revoke_tokens(session: Session, user_id: str, *, keep_token_id: str = "") -> int:
    """Delete the user's tokens (with what they minted), except `keep_token_id` and its children. Returns how
    many were deleted."""
    stmt = delete(ApiToken).where(ApiToken.user_id == user_id)
    if keep_token_id:
        stmt = stmt.where(ApiToken.id != keep_token_id,
                          or_(ApiToken.parent_id.is_(None), ApiToken.parent_id != keep_token_id))
    return session.execute(stmt.execution_options(synchronize_session=False)).rowcount or 0


def start_browser_session(session: Session, request: Request, response: Response, login: str, password: str) \
        -> tuple[User, str]:
    """Check a password (local or Active Directory) and open a browser session: the httponly SameSite=Strict
    cookie is set on `response`. Returns the user and the session's secret. The one login of the API and the
    web pages; raises what authenticate_password raises."""
    from manager.identity.login import authenticate_password

    client = request.client.host if request.client else ""
    user = authenticate_password(session, login, password, client_address=client)
    secret = issue_token(session, user, name="browser session", kind="session", client_address=client)
    emit(session, "user.login", f"{user.username}@{user.domain} logged in from {client or 'an unknown address'}",
         actor=f"{user.username}@{user.domain}", user_id=user.id)
    response.set_cookie(SESSION_COOKIE, secret, httponly=True, samesite="strict",
                        max_age=int(token_lifetime_limit("session").total_seconds()),
                        secure=request.url.scheme == "https")
    return user, secret


def end_browser_session(session: Session, request: Request, response: Response) -> None:
    """Revoke the token this request presented (cookie or bearer), and with it the tokens it minted (the
    database's ON DELETE CASCADE), and clear the cookie on `response`."""
    secret, _ = _presented_secret(request)
    if secret:
        token = session.scalar(select(ApiToken).where(ApiToken.token_hash == token_digest(secret)))
        if token is not None:
            session.delete(token)
            user = session.get(User, token.user_id)
            who = f"{user.username}@{user.domain}" if user is not None else token.user_id
            emit(session, "user.logout", f"{who} logged out ({token.kind})", actor=who, user_id=token.user_id)
    response.delete_cookie(SESSION_COOKIE)


def roles_of(session: Session, user_id: str) -> set[Role]:
    """The user's roles, held directly or through any group (nested included): one query."""
    stmt = select(RoleAssignment.role).where(
        or_(RoleAssignment.user_id == user_id, RoleAssignment.group_id.in_(user_groups_select(user_id))))
    roles = set(session.scalars(stmt))
    roles.add(Role.USER)  # everyone who can log in may use the self-service portal
    return roles


def csrf_token(session_secret: str) -> str:
    """The CSRF token of a browser session: derived from the session's secret (which only the server and the
    httponly cookie hold), so it needs no storage and dies with the session. Pages put it in a meta tag; scripts
    send it as the X-CSRF-Token header, forms as the csrf_token field."""
    return hashlib.sha256(b"vdi-csrf\0" + session_secret.encode()).hexdigest()[:40]


def _presented_secret(request: Request) -> tuple[str | None, bool]:
    """(the secret, whether it came from the session cookie)."""
    header = request.headers.get("authorization", "")
    if header.lower().startswith("bearer "):
        return header[7:].strip() or None, False
    return request.cookies.get(SESSION_COOKIE) or None, True


# Every request runs these: columns rather than ORM objects, statements built once.
_TOKEN_HOLDER = select(ApiToken.id, ApiToken.expires_at, ApiToken.last_used_at, User.id, User.username, User.domain,
                       User.enabled, User.deleted_in_directory, ApiToken.kind, ApiToken.created_at) \
    .join(User, User.id == ApiToken.user_id).where(ApiToken.token_hash == bindparam("digest"))
# The same, locking the user's row (FOR NO KEY UPDATE: foreign-key checks are not blocked) until the transaction ends.
_TOKEN_HOLDER_LOCKING = _TOKEN_HOLDER.with_for_update(of=User, key_share=True)
_TOKEN_USED = update(ApiToken).where(ApiToken.id == bindparam("token_id")).values(last_used_at=bindparam("now")) \
    .execution_options(synchronize_session=False)
_TOKEN_TOUCH = "vdi_token_touch"


def _touch_token(session: Session, *_args) -> None:
    touch = session.info.pop(_TOKEN_TOUCH, None)
    if touch is not None:
        session.connection().execute(_TOKEN_USED, touch)


# A token's last use is written with the request's commit (one round trip less than a statement of its own); a
# request that fails and rolls back leaves it as it was.
event.listen(Session, "before_commit", _touch_token)
forget_on_rollback(_TOKEN_TOUCH)


def authenticate(request: Request, session: Session, *, lock_user: bool = False,
                 csrf: str | None = None) -> Principal:
    """Who is asking (cached on the request). `lock_user`: also lock the user's row until the transaction ends,
    in the same statement (the broker's connect serialises a user's connects this way).

    A state-changing request authenticated by the session cookie must prove it comes from one of our pages: the
    X-CSRF-Token header (or `csrf`, a form's field, passed by the page route that read it) must be the session's
    csrf_token. The cookie is SameSite=Strict as well; a bearer token is never sent by a browser on its own, so it
    needs neither."""
    cached = getattr(request.state, "principal", None)
    if cached is not None:
        return cached
    secret, from_cookie = _presented_secret(request)
    if not secret:
        raise NotAuthenticated()
    if from_cookie and request.method not in SAFE_METHODS:
        presented = csrf if csrf is not None else request.headers.get(CSRF_HEADER, "")
        if not hmac.compare_digest(presented.encode(), csrf_token(secret).encode()):
            raise Forbidden("this request has no valid CSRF token (X-CSRF-Token header or csrf_token field); "
                            "reload the page and try again")
    found = session.execute(_TOKEN_HOLDER_LOCKING if lock_user else _TOKEN_HOLDER,
                            {"digest": token_digest(secret)}).first()
    now = utcnow()
    if found is None:
        raise NotAuthenticated("your session or token is unknown or expired; log in again")
    token_id, expires, last_used, user_id, username, domain, enabled, deleted, kind, created = found
    # the configured limit bounds every token, also one made before the limit was lowered (or without an expiry)
    bound = created + token_lifetime_limit(kind)
    expires = bound if expires is None else min(expires, bound)
    if expires <= now:
        raise NotAuthenticated("your session or token is unknown or expired; log in again")
    if not enabled or deleted:
        raise Forbidden("this account is disabled")
    if last_used is None or (now - last_used).total_seconds() > 60:
        session.info[_TOKEN_TOUCH] = {"token_id": token_id, "now": now}
    principal = Principal(user_id=user_id, username=username, domain=domain,
                          load_roles=lambda: roles_of(session, user_id), token_id=token_id, token_kind=kind,
                          token_expires_at=expires)
    request.state.principal = principal
    return principal


def require(permission: str, *, lock_user: bool = False) -> Callable[..., Principal]:
    """A dependency that authenticates the caller and checks one permission; returns the Principal. `lock_user`:
    see authenticate."""

    def dependency(request: Request, session: Annotated[Session, Depends(request_session, scope="function")]) \
            -> Principal:
        principal = authenticate(request, session, lock_user=lock_user)
        if not principal.can(permission):
            raise Forbidden(action=permission.replace(":", " "))
        return principal

    dependency.permission = permission  # type: ignore[attr-defined]  (read by the route audit test)
    dependency.__name__ = f"require_{permission.replace(':', '_')}"
    return dependency


def public() -> Callable[[], None]:
    """Marks a route as deliberately open (health, login). The route audit test accepts it explicitly."""

    def dependency() -> None:
        return None

    dependency.permission = "public"  # type: ignore[attr-defined]
    return dependency
