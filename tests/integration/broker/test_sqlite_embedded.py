"""The embedded default (SQLite) has no row locks: assignment is serialised by a process lock and guarded by
compare-and-swap. Many threads on one pool: every desktop goes to exactly one user, nobody gets two."""
from __future__ import annotations

import concurrent.futures
import threading
from collections import Counter

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import sessionmaker

from core.errors import PoolFull


@pytest.fixture
def sqlite_sessions(tmp_path):
    from manager.db import make_engine
    from manager.migrate import upgrade

    url = f"sqlite:///{tmp_path / 'vdi.db'}"
    upgrade(url)
    engine = make_engine(url)
    yield sessionmaker(bind=engine, expire_on_commit=False)
    engine.dispose()


def test_threads_on_sqlite_never_double_assign(sqlite_sessions):
    from broker.assignment import assignment_guard, take_from_pool
    from core.enums import PowerState
    from manager.models import Desktop, Entitlement, Pool, Template, User

    make = sqlite_sessions
    with make() as s, s.begin():
        tpl = Template(name="t")
        s.add(tpl)
        s.flush()
        pool = Pool(name="lite", template_id=tpl.id, size=30, max_desktops_per_user=1)
        s.add(pool)
        s.flush()
        s.add_all([Desktop(name=f"lite-{i:03d}", pool_id=pool.id, power_state=PowerState.UP) for i in range(30)])
        users = [User(username=f"u{i}") for i in range(50)]
        s.add_all(users)
        s.flush()
        s.add_all([Entitlement(user_id=u.id, pool_id=pool.id) for u in users])
        pool_id, user_ids = pool.id, [u.id for u in users]

    barrier = threading.Barrier(25)
    local = threading.local()

    def connect(user_id):
        if not hasattr(local, "ready"):
            local.ready = True
            barrier.wait()
        outcomes = []
        for _ in range(2):  # the second call of the same user must find the same desktop
            with make() as s:
                try:
                    with assignment_guard(s):
                        _pool, got = take_from_pool(s, user_id, "id", pool_id)
                        s.commit()
                    outcomes.append(got.desktop_id)
                except PoolFull as exc:
                    outcomes.append(exc.code)
        return user_id, outcomes

    with concurrent.futures.ThreadPoolExecutor(25) as ex:
        results = list(ex.map(connect, user_ids))
    firsts = Counter(o[0] for _u, o in results)
    assert firsts["pool_full"] == 20
    granted = {u: o[0] for u, o in results if o[0] != "pool_full"}
    assert len(set(granted.values())) == 30
    assert all(o[0] == o[1] for _u, o in results)  # a reconnect finds the same desktop (or the same full pool)
    with make() as s:
        assert s.scalar(select(func.count(func.distinct(Desktop.assigned_user_id)))) == 30
        assert dict(s.execute(select(Desktop.id, Desktop.assigned_user_id)).all()) == \
            {d: u for u, d in granted.items()}
