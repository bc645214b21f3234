"""Fixtures shared by every area: the real Postgres test database, the API client, an admin token."""
from __future__ import annotations

import os
import time
from collections.abc import Iterator

import psycopg
import pytest
from hypothesis import HealthCheck, settings
from sqlalchemy import text
from sqlalchemy.exc import OperationalError

from tests.harness.postgres import PostgresUnavailable, fresh_database
from tests.shards import pytest_addoption, pytest_collection_modifyitems  # noqa: F401 (the shards' hooks)

# Hypothesis' per-example deadline and its too_slow health check are wall-clock assertions: on a loaded
# machine they fail correct code. This suite has none (speed is measured by bench/*.py), so every @given
# runs without them; tests/unit/test_hypothesis_settings.py keeps it that way.
settings.register_profile("vdi", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("vdi")

REDIS_URL = os.environ.get("VDI_TEST_REDIS_URL", "redis://127.0.0.1:6379/11")


@pytest.fixture(scope="session")
def pg_url() -> Iterator[str]:
    """A fresh Postgres database for this test run, migrated to head by Alembic."""
    try:
        with fresh_database() as url:
            yield url
    except PostgresUnavailable as exc:  # raised before the yield only: pytest throws nothing into fixtures
        pytest.fail(str(exc))


@pytest.fixture(scope="session")
def pg_engine(pg_url):
    from manager import db

    engine = db.make_engine(pg_url)
    db.configure(engine=engine)
    yield engine
    engine.dispose()


@pytest.fixture
def settings_env(monkeypatch, tmp_path, pg_url):
    """Point the manager's settings at the test database and a private data dir."""
    from manager.config import get_settings

    monkeypatch.setenv("VDI_DATABASE_URL", pg_url)
    monkeypatch.setenv("VDI_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.delenv("VDI_REDIS_URL", raising=False)
    get_settings.cache_clear()
    yield get_settings()
    get_settings.cache_clear()


@pytest.fixture
def db_session(pg_engine, clean_db):
    from manager import db

    with db.session_scope() as session:
        yield session


@pytest.fixture
def clean_db(pg_engine):
    """Empty every table before the test (real commits happen during tests: threads and workers see them)."""
    from manager import db
    from manager.models import Base

    db.configure(engine=pg_engine)
    tables = ", ".join(f'"{t.name}"' for t in Base.metadata.sorted_tables)
    # The previous test's manager may still be finishing a background job or loop pass (its rows locked while the
    # TRUNCATE takes its tables one by one): Postgres then picks the TRUNCATE as a deadlock's victim, and trying
    # again once that transaction has ended is all it takes.
    for attempt in range(5):
        try:
            with pg_engine.begin() as conn:
                conn.execute(text(f"TRUNCATE {tables} RESTART IDENTITY CASCADE"))
            break
        except OperationalError as exc:
            if not isinstance(exc.orig, psycopg.errors.DeadlockDetected) or attempt == 4:
                raise
            time.sleep(0.5)
    yield


@pytest.fixture
def app(settings_env, pg_engine, clean_db):
    from manager import db
    from manager.app import create_app

    db.configure(engine=pg_engine)
    return create_app(settings_env, configure_db=False)


@pytest.fixture
def anon_client(app):
    from fastapi.testclient import TestClient

    with TestClient(app) as client:
        yield client


@pytest.fixture
def admin_token(app) -> str:
    from manager import db
    from manager.auth import issue_token
    from manager.bootstrap import ensure_admin

    with db.session_scope() as session:
        admin, _ = ensure_admin(session, password="admin-test-password")
        return issue_token(session, admin, name="tests")


@pytest.fixture
def client(anon_client, admin_token):
    anon_client.headers["Authorization"] = f"Bearer {admin_token}"
    return anon_client
