"""A new database has its administrator as soon as it is migrated (`vdi db upgrade`, which `vdi serve` runs):
admin@local, SuperUser, its generated password written 0600 into the data dir; a second upgrade changes nothing;
`vdi admin reset-password` (the same break glass as `vdi restore-admin`) gives it a new one."""
from __future__ import annotations

import os
import subprocess
import sys

from sqlalchemy import select

from core.enums import Role
from manager.auth import verify_password
from manager.db import make_engine
from tests.integration.test_migrations import empty_pg  # noqa: F401 (a fixture: an empty Postgres database)


def _vdi(env: dict[str, str], *args: str) -> str:
    done = subprocess.run([sys.executable, "-m", "manager.cli", *args], env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    return done.stdout


def _admin(url: str) -> tuple[str, set[str]]:
    from sqlalchemy.orm import Session

    from manager.models import RoleAssignment, User

    engine = make_engine(url)
    try:
        with Session(engine) as session:
            admin = session.scalar(select(User).where(User.username == "admin", User.domain == "local"))
            assert admin is not None and admin.enabled
            roles = set(session.scalars(select(RoleAssignment.role).where(RoleAssignment.user_id == admin.id)))
            return admin.password_hash, {str(getattr(r, "value", r)) for r in roles}
    finally:
        engine.dispose()


def test_upgrade_of_a_new_database_creates_the_administrator(empty_pg, tmp_path):  # noqa: F811
    env = {**os.environ, "VDI_DATABASE_URL": empty_pg, "VDI_DATA_DIR": str(tmp_path / "data")}
    env.pop("VDI_ADMIN_PASSWORD", None)
    out = _vdi(env, "db", "upgrade")
    password_file = tmp_path / "data" / "admin-password"
    assert "created the administrator admin@local" in out and str(password_file) in out
    assert password_file.stat().st_mode & 0o777 == 0o600
    password = password_file.read_text().strip()
    hashed, roles = _admin(empty_pg)
    assert verify_password(password, hashed) and roles == {Role.SUPER_USER.value}

    again = _vdi(env, "db", "upgrade")  # a database with users is left as it is
    assert "created" not in again and password_file.read_text().strip() == password
    assert _admin(empty_pg)[0] == hashed

    _vdi(env, "admin", "reset-password")
    new_password = password_file.read_text().strip()
    assert new_password != password and password_file.stat().st_mode & 0o777 == 0o600
    hashed, roles = _admin(empty_pg)
    assert verify_password(new_password, hashed) and not verify_password(password, hashed)
    assert roles == {Role.SUPER_USER.value}
