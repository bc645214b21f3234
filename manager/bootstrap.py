"""First-start set-up: the local bootstrap administrator (admin@local, SuperUser)."""
from __future__ import annotations

import secrets
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session

from core.enums import PrincipalSource, Role
from manager.auth import hash_password
from manager.config import write_private
from manager.models import RoleAssignment, User

ADMIN_USERNAME = "admin"


def ensure_admin(session: Session, password: str | None = None, password_file: Path | None = None) -> tuple[User, str | None]:
    """Create admin@local if missing. Returns the user and the password if one was generated now (else None).
    A generated password is written to `password_file` (mode 0600) so the operator can read it once."""
    user = session.scalar(select(User).where(User.username == ADMIN_USERNAME, User.domain == "local"))
    generated = None
    if user is None:
        if not password:
            password = generated = secrets.token_urlsafe(12)
        user = User(username=ADMIN_USERNAME, domain="local", upn="admin@local", display_name="Administrator",
                    source=PrincipalSource.LOCAL, password_hash=hash_password(password))
        session.add(user)
        session.flush()
        session.add(RoleAssignment(user_id=user.id, role=Role.SUPER_USER))
        session.flush()
        if generated and password_file is not None:
            _write_secret(password_file, generated)
    return user, generated


def bootstrap_admin(session: Session, password: str | None = None, password_file: Path | None = None) -> bool:
    """On a new database (no user at all, run by `vdi db upgrade` and `vdi serve`): admin@local, as ensure_admin
    makes it. A database with users is left as it is: an operator who removed or disabled admin@local gets it back
    only on purpose, with `vdi restore-admin`. True when it was created now."""
    if session.scalar(select(User.id).limit(1)) is not None:
        return False
    ensure_admin(session, password, password_file)
    return True


def _write_secret(path: Path, secret: str) -> None:
    write_private(path, secret + "\n")


def restore_admin(session: Session, password: str | None = None, password_file: Path | None = None) -> str:
    """Break glass (`vdi restore-admin`, run on the manager host): admin@local exists, is enabled, holds SuperUser
    and has a new password (given, or generated and written to `password_file`, mode 0600); its old tokens are
    revoked. For when no enabled SuperUser remains (e.g. the directory removed the last one). Returns the password."""
    from manager.auth import revoke_tokens

    user, generated = ensure_admin(session, password, password_file)
    if generated is not None:
        return generated
    password = password or secrets.token_urlsafe(12)
    user.password_hash, user.enabled, user.deleted_in_directory = hash_password(password), True, False
    if session.scalar(select(RoleAssignment.id).where(RoleAssignment.user_id == user.id,
                                                      RoleAssignment.role == Role.SUPER_USER)) is None:
        session.add(RoleAssignment(user_id=user.id, role=Role.SUPER_USER))
    revoke_tokens(session, user.id)
    session.flush()
    if password_file is not None:
        _write_secret(password_file, password)
    return password
