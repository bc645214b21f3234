"""A fresh Postgres database on the test server, migrated to head, dropped afterwards.

Used by the `pg_url` fixture (tests/conftest.py), by the browser tests' manager (tests/e2e/server.py: its own
database, since other tests in the same session empty pg_url's tables) and by scripts/screenshots.py.
"""
from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator

from sqlalchemy import text

PG_ADMIN_URL = os.environ.get("VDI_TEST_PG_ADMIN_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")


class PostgresUnavailable(RuntimeError):
    """The test Postgres server does not accept us (not started, wrong URL)."""


def pg_url_for(dbname: str) -> str:
    """The URL of database `dbname` on the test server."""
    return PG_ADMIN_URL.rsplit("/", 1)[0] + "/" + dbname


@contextlib.contextmanager
def fresh_database(prefix: str = "vdi_test") -> Iterator[str]:
    """Create `<prefix>_<pid>_<random>`, migrate it to head with Alembic, yield its URL, drop it (closing any
    connection still open) on exit. PostgresUnavailable, naming the server, if it cannot be created."""
    from manager.db import make_engine
    from manager.migrate import upgrade

    name = f"{prefix}_{os.getpid()}_{uuid.uuid4().hex[:6]}"
    admin = make_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    try:
        try:
            with admin.connect() as conn:
                conn.execute(text(f'CREATE DATABASE "{name}"'))
        except Exception as exc:  # make the cause obvious: the suite needs the real server
            raise PostgresUnavailable(f"Postgres at {PG_ADMIN_URL} is not usable ({exc}); `make test` starts it "
                                      "(`make services`)") from exc
        try:
            url = pg_url_for(name)
            upgrade(url)
            yield url
        finally:
            with admin.connect() as conn:
                conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    finally:
        admin.dispose()
