"""Alembic from empty to head and back, on Postgres and on SQLite; models and migrations never drift."""
from __future__ import annotations

import uuid

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect, text

from manager.db import make_engine
from manager.migrate import current, downgrade, upgrade
from manager.models import Base
from tests.harness.postgres import PG_ADMIN_URL, pg_url_for as _pg_url


@pytest.fixture
def empty_pg():
    name = f"vdi_mig_{uuid.uuid4().hex[:8]}"
    admin = make_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    yield _pg_url(name)
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


@pytest.fixture
def empty_sqlite(tmp_path):
    return f"sqlite:///{tmp_path / 'vdi.db'}"


def _drift(url: str) -> list:
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            return compare_metadata(MigrationContext.configure(conn, opts={"compare_type": True}), Base.metadata)
    finally:
        engine.dispose()


def _tables(url: str) -> set[str]:
    engine = make_engine(url)
    try:
        return set(inspect(engine).get_table_names()) - {"alembic_version"}
    finally:
        engine.dispose()


@pytest.mark.parametrize("backend", ["empty_pg", "empty_sqlite"])
def test_upgrade_downgrade_and_no_drift(request, backend):
    url = request.getfixturevalue(backend)
    upgrade(url)
    assert current(url) is not None
    assert _tables(url) == set(Base.metadata.tables)
    assert _drift(url) == [], "models and migrations differ: write a migration (alembic revision --autogenerate)"
    downgrade(url, "base")
    assert _tables(url) == set()
    upgrade(url)
    assert _tables(url) == set(Base.metadata.tables)
