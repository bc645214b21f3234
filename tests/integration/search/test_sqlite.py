"""The embedded default: the same registry and service run on SQLite (migrated by Alembic)."""
from __future__ import annotations

import pytest
from sqlalchemy.orm import Session

from manager.api.search import BadSearch, run_search
from manager.db import make_engine
from manager.migrate import upgrade
from tests.integration.search.dataset import populate


@pytest.fixture(scope="module")
def sqlite_session(tmp_path_factory):
    url = f"sqlite:///{tmp_path_factory.mktemp('search-sqlite') / 'vdi.db'}"
    upgrade(url)
    engine = make_engine(url)
    with Session(engine) as session:
        populate(session)
        session.commit()
        yield session
    engine.dispose()


@pytest.mark.parametrize("query, expected", [
    ("Vms: Users.usrname = *john* and Templates.name = *xp* and apps = *office*", {"web1"}),
    ("Vms: cpu_usage > 90 and Hosts.name = vs-a", {"web1"}),
    ("Vms: tag = prod or tag = dev", {"web1", "db1", "web2"}),
    ("Vms: uptime > 01:30", {"web1", "testdesktop"}),
    ("Vms: web", {"web1", "web2", "testdesktop"}),
    ("Vms: name = WEB1", {"web1"}),
    ("Vms: protocols = RDP", {"web2"}),
    ("Users: Vms.name = web1", {"john.smith", "svc"}),
    ("Users: user_and_domain = mary@internal", {"mary"}),
    ("Events: severity >= warning and time > 01/15/2024", {"testdesktop paused", "disk error on web2",
                                                          "db1 image illegal", "host1 cpu high"}),
    ("Events: time = today", {"desktop web1 started", "host1 cpu high"}),
    ("Templates: childcount >= 2", {"Blank", "WinXP-office", "rhel9"}),
    ("Storage: free_size > 6 and total_size < 20", {"sd1"}),
])
def test_queries_on_sqlite(sqlite_session, query, expected):
    result = run_search(sqlite_session, query)
    label = {"Event": "message", "User": "username"}.get(result["object"], "name")
    assert {getattr(item, label) for item in result["items"]} == expected
    assert result["total"] == len(expected)


def test_errors_on_sqlite(sqlite_session):
    with pytest.raises(BadSearch) as caught:
        run_search(sqlite_session, "Vms: status = running")
    assert caught.value.to_dict()["error"] == "INVALID_CONDITION_VALUE"
