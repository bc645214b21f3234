"""Password login: local accounts (pbkdf2 hashes). Directory (AD) accounts are checked by an LDAP bind as the
user when a directory is configured (manager.identity.directory)."""
from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from core.enums import PrincipalSource
from core.errors import Forbidden, NotAuthenticated
from manager.auth import verify_password
from manager.models import User

WRONG_CREDENTIALS = "wrong user name or password"


def split_login(login: str) -> tuple[str, str | None]:
    """'user', 'user@domain', 'DOMAIN\\user' -> (user, domain or None)."""
    if "\\" in login:
        domain, user = login.split("\\", 1)
        return user, domain
    if "@" in login:
        user, domain = login.rsplit("@", 1)
        return user, domain
    return login, None


def authenticate_password(session: Session, login: str, password: str, *, client_address: str = "") -> User:
    """Return the user whose credentials these are. Raises NotAuthenticated (401, no detail about which part was
    wrong) or Forbidden (403) for a disabled account."""
    username, domain = split_login(login.strip())
    stmt = select(User).where(User.username == username, User.source == PrincipalSource.LOCAL)
    if domain is not None:
        stmt = stmt.where(User.domain == domain)
    user = session.scalar(stmt)
    if user is None or not user.password_hash or not verify_password(password, user.password_hash):
        raise NotAuthenticated(WRONG_CREDENTIALS)
    if not user.enabled:
        raise Forbidden("this account is disabled")
    return user
