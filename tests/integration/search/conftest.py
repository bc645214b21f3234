"""One inventory per test module (the golden tests only read), and an API client without the app's lifespan
(the liveness monitor would mark the fixture's hosts, which send no heartbeats, non-responsive)."""
from __future__ import annotations

from types import SimpleNamespace

import pytest
from sqlalchemy import delete, text

from tests.integration.search.dataset import populate


@pytest.fixture(scope="module")
def inventory(pg_engine):
    from manager import db
    from manager.auth import issue_token
    from manager.bootstrap import ensure_admin
    from manager.models import Base, Event

    db.configure(engine=pg_engine)
    tables = ", ".join(f'"{t.name}"' for t in Base.metadata.sorted_tables)
    with pg_engine.begin() as conn:
        conn.execute(text(f"TRUNCATE {tables} RESTART IDENTITY CASCADE"))
    with db.session_scope() as session:
        desktop_ids = populate(session)
        admin, _ = ensure_admin(session, password="admin-test-password")
        token = issue_token(session, admin, name="search-tests")
    # The golden answers are about what populate() wrote; the test's own token is not part of that inventory.
    with db.session_scope() as session:
        session.execute(delete(Event).where(Event.code == "user.token_created"))
    return SimpleNamespace(desktop_ids=desktop_ids, token=token)


@pytest.fixture(scope="module")
def api(inventory, pg_url, pg_engine, tmp_path_factory):
    from fastapi.testclient import TestClient

    from manager import db
    from manager.app import create_app
    from manager.config import Settings

    settings = Settings(database_url=pg_url, data_dir=tmp_path_factory.mktemp("search-data"))
    db.configure(engine=pg_engine)
    client = TestClient(create_app(settings, configure_db=False))
    client.headers["Authorization"] = f"Bearer {inventory.token}"
    return client
