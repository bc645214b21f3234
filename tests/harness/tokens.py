"""API tokens of fresh local accounts, for tests that check who may call a route."""
from __future__ import annotations

from core.enums import Role
from manager import db
from manager.auth import hash_password, issue_token
from manager.models import RoleAssignment, User


def token_for(role: Role | None, name: str) -> dict[str, str]:
    """The Authorization header of a new local account `name` holding `role` (None: a plain user)."""
    with db.session_scope() as s:
        user = User(username=name, domain="local", upn=f"{name}@local", password_hash=hash_password("pw-" * 4))
        s.add(user)
        s.flush()
        if role is not None:
            s.add(RoleAssignment(user_id=user.id, role=role))
        return {"Authorization": f"Bearer {issue_token(s, user, name='t')}"}
