"""First-start set-up: the local bootstrap administrator (admin@local, SuperUser)."""
from __future__ import annotations

import os
import secrets
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session

from core.enums import PrincipalSource, Role
from manager.auth import hash_password
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
            password_file.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(password_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as fh:
                fh.write(generated + "\n")
    return user, generated
