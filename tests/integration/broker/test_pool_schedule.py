"""A time-based pool's recurring opening hours, driven by a controllable clock: the pool maintenance pass
(manager.provisioning.tasks.maintain_pools(now=...)) opens and closes the pool on schedule, connects are refused
while it is closed, a lease ends at closing time and its desktop is reclaimed; across a DST change and a window
crossing midnight. Real Postgres, desktops on node agents (libvirt test driver)."""
from __future__ import annotations

import datetime as dt

import pytest
from sqlalchemy import select

from tests.integration.broker.conftest import wait_for_jobs

PARIS = "Europe/Paris"
SCHEDULE = [{"days": ["mon", "tue", "wed", "thu", "fri"], "start": "08:00", "end": "18:00"},
            {"days": ["sat"], "start": "22:00", "end": "02:00"}]


def at(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text).astimezone(dt.timezone.utc)


def take(pool_id: str, user_id: str, now: dt.datetime):
    from broker import assignment
    from manager import db

    with db.session_scope() as session:
        _pool, got = assignment.take_from_pool(session, user_id, "id", pool_id, now=now)
        return got.desktop_id, got.lease_until


def pool_events(pool_id: str) -> list[tuple[str, str]]:
    from manager import db
    from manager.models import Event

    with db.session_scope() as session:
        return [(e.code, e.message) for e in session.scalars(
            select(Event).where(Event.pool_id == pool_id, Event.code.in_(("pool.opened", "pool.closed",
                                                                          "desktop.lease_expired")))
            .order_by(Event.id))]


def holder(desktop_id: str):
    from manager import db
    from manager.models import Desktop

    with db.session_scope() as session:
        row = session.get(Desktop, desktop_id)
        return row.assigned_user_id, row.lease_until


def test_recurring_windows_open_and_close_the_pool(world, client):
    from broker.errors import PoolClosed
    from manager.provisioning.tasks import maintain_pools

    world.hosts(1)
    pool_id = world.pool(1, pool_type="time_based", schedule=SCHEDULE, time_zone=PARIS)
    ann, _token = world.user("ann")
    world.entitle(pool_id=pool_id, user_id=ann)

    # Friday 2030-03-29 07:00 in Paris (UTC+1): closed; the first pass records it
    early = at("2030-03-29T07:00:00+01:00")
    assert maintain_pools(now=early)["scheduled"] == 1
    with pytest.raises(PoolClosed, match=r"opens at 2030-03-29T08:00:00\+01:00"):
        take(pool_id, ann, early)
    assert maintain_pools(now=early)["scheduled"] == 0  # nothing changed: no second event

    # 09:00: open; the lease runs to the closing time (18:00 local = 17:00 UTC)
    morning = at("2030-03-29T09:00:00+01:00")
    assert maintain_pools(now=morning)["scheduled"] == 1
    desktop_id, lease = take(pool_id, ann, morning)
    assert lease == at("2030-03-29T17:00:00+00:00")

    # 18:00: closed; the lease ends and the desktop is reclaimed (reimage) by the same pass
    closing = at("2030-03-29T18:00:00+01:00")
    result = maintain_pools(now=closing)
    assert (result["scheduled"], result["reclaimed"]) == (1, 1)
    wait_for_jobs()
    assert holder(desktop_id) == (None, None)
    with pytest.raises(PoolClosed):
        take(pool_id, ann, closing)

    # Saturday 22:00 to Sunday 02:00 crosses midnight, and Paris moves to UTC+2 at 02:00 that night: the window
    # closes at 02:00 CET (01:00 UTC), when the clocks jump to 03:00
    night = at("2030-03-30T23:30:00+01:00")
    assert maintain_pools(now=night)["scheduled"] == 1
    desktop_id, lease = take(pool_id, ann, night)
    assert lease == at("2030-03-31T01:00:00+00:00")
    assert maintain_pools(now=at("2030-03-31T00:59:00+00:00"))["scheduled"] == 0  # still open after midnight
    assert maintain_pools(now=at("2030-03-31T03:00:00+02:00"))["reclaimed"] == 1
    wait_for_jobs()
    assert holder(desktop_id) == (None, None)

    # Monday after the change: 08:00 local is 06:00 UTC now
    with pytest.raises(PoolClosed):
        take(pool_id, ann, at("2030-04-01T05:59:00+00:00"))
    assert maintain_pools(now=at("2030-04-01T06:00:00+00:00"))["scheduled"] == 1
    _desktop, lease = take(pool_id, ann, at("2030-04-01T06:00:00+00:00"))
    assert lease == at("2030-04-01T16:00:00+00:00")

    codes = [code for code, _message in pool_events(pool_id)]
    assert codes == ["pool.closed", "pool.opened", "pool.closed", "desktop.lease_expired", "pool.opened",
                     "pool.closed", "desktop.lease_expired", "pool.opened"]


def test_closing_cuts_a_lease_that_outlives_the_new_hours(world, client):
    """A lease taken before the opening hours were shortened ends when the pool closes, not at its own end."""
    from manager import db
    from manager.models import Pool
    from manager.provisioning.tasks import maintain_pools

    world.hosts(1)
    pool_id = world.pool(1, pool_type="time_based", lease_seconds=8 * 3600)
    bo, _token = world.user("bo")
    world.entitle(pool_id=pool_id, user_id=bo)
    desktop_id, lease = take(pool_id, bo, at("2030-04-01T09:00:00+00:00"))
    assert lease == at("2030-04-01T17:00:00+00:00")
    with db.session_scope() as session:
        session.get(Pool, pool_id).schedule = [{"days": ["mon"], "start": "08:00", "end": "12:00"}]
    assert maintain_pools(now=at("2030-04-01T11:00:00+00:00"))["reclaimed"] == 0
    result = maintain_pools(now=at("2030-04-01T12:00:00+00:00"))
    assert (result["scheduled"], result["reclaimed"]) == (1, 1)
    wait_for_jobs()
    assert holder(desktop_id) == (None, None)
    closed = [message for code, message in pool_events(pool_id) if code == "pool.closed"]
    assert len(closed) == 1 and "1 running lease(s) end now" in closed[0]
    with db.session_scope() as session:  # no opening hours any more: the pool is neither open nor closed by them
        session.get(Pool, pool_id).schedule = []
    assert maintain_pools(now=at("2030-04-01T13:00:00+00:00"))["scheduled"] == 0
    with db.session_scope() as session:
        assert session.get(Pool, pool_id).schedule_open is None
