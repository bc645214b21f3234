"""Pooled Postgres connections that died while idle are replaced before use, without a ping on every checkout."""
from __future__ import annotations

import pytest
from sqlalchemy import text

from manager import db


@pytest.fixture
def engine(pg_url):
    engine = db.make_engine(pg_url, pool_size=2, max_overflow=0)
    yield engine
    engine.dispose()


def _backend_pids(engine, count: int) -> list[int]:
    """Check out `count` connections at once (so the pool holds that many), note their backends, return them."""
    connections = [engine.connect() for _ in range(count)]
    pids = [c.execute(text("select pg_backend_pid()")).scalar() for c in connections]
    for c in connections:
        c.close()
    return pids


@pytest.fixture
def pings(engine, monkeypatch) -> list[int]:
    """One entry per liveness ping the engine's dialect sends."""
    sent: list[int] = []
    original = engine.dialect.do_ping

    def counting_ping(dbapi_connection):
        sent.append(1)
        return original(dbapi_connection)

    monkeypatch.setattr(engine.dialect, "do_ping", counting_ping)
    return sent


def test_a_connection_killed_in_the_pool_is_replaced_before_the_next_query(engine, pg_url):
    pids = _backend_pids(engine, 2)
    admin = db.make_engine(pg_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        for pid in pids:
            assert conn.execute(text("select pg_terminate_backend(:p, 10000)"), {"p": pid}).scalar()
    admin.dispose()

    for _ in range(3):  # every pooled connection is dead: each checkout must notice and open a fresh one
        with engine.connect() as conn:
            assert conn.execute(text("select pg_backend_pid()")).scalar() not in pids


def test_a_healthy_pooled_connection_is_not_pinged(engine, pings):
    _backend_pids(engine, 1)
    for _ in range(5):
        with engine.connect() as conn:
            assert conn.execute(text("select 1")).scalar() == 1
    assert pings == []


def test_a_connection_idle_past_the_limit_is_pinged(engine, pings, monkeypatch):
    _backend_pids(engine, 1)
    monkeypatch.setattr(db, "PING_AFTER_IDLE_S", 0.0)
    with engine.connect() as conn:
        assert conn.execute(text("select 1")).scalar() == 1
    assert pings == [1]
