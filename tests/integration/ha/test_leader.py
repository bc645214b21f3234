"""The manager's leader election and its fence, on the real Postgres (and the embedded SQLite): two electors in one
process stand for two `vdi serve` processes (tests/integration/ha/test_manager_failover.py runs real ones).

A lease runs out by the database's clock, so "wait until it has expired" is a poll of the database with a bound,
never a sleep of a fixed length or an assertion on time."""
from __future__ import annotations

import datetime as dt
import threading
import time

import pytest
from sqlalchemy import select, text, update
from sqlalchemy.exc import OperationalError

from event_manager.service import emit
from ha_manager.leader import LeaderElector, NotLeader, SingletonLoop, db_now, fenced
from ha_manager.service import ha_status
from manager import db
from manager.models import Cluster, Event, Host, ManagerLeader

TTL, RENEW = 1.0, 0.3


def elector(name: str, **kwargs) -> LeaderElector:
    return LeaderElector(name, f"http://{name}.test:8000", ttl_s=kwargs.pop("ttl_s", TTL),
                         renew_s=kwargs.pop("renew_s", RENEW), **kwargs)


def until_leads(candidate: LeaderElector, bound_s: float = 30.0) -> str:
    """Tick `candidate` until it leads (the other's lease has run out by the database's clock)."""
    deadline = time.monotonic() + bound_s
    while True:
        try:
            said = candidate.tick()
        except OperationalError as exc:  # behind a fenced transaction's share lock: the election thread retries
            assert "lock timeout" in str(exc)
            said = "lock timeout"
        if candidate.term() is not None:
            return said
        assert time.monotonic() < deadline, f"{candidate.instance_id} never took over: {said}"
        time.sleep(0.1)


@pytest.fixture
def host(clean_db) -> str:
    with db.session_scope() as session:
        cluster = Cluster(name="c1")
        session.add(cluster)
        session.flush()
        host = Host(name="h1", cluster_id=cluster.id)
        session.add(host)
        session.flush()
        return host.id


def rename_host(host_id: str, name: str) -> None:
    """A singleton loop's kind of write: an ORM update and an event (written by event_manager at Core level)."""
    with db.session_scope() as session:
        session.execute(update(Host).where(Host.id == host_id).values(name=name))
        emit(session, "host.updated", f"host renamed {name}", host_id=host_id)


def host_name(host_id: str) -> str:
    with db.session_scope() as session:
        return session.get(Host, host_id).name


def test_one_leads_the_other_stands_by_then_takes_over_with_the_next_epoch(clean_db):
    a, b = elector("a"), elector("b")
    assert a.tick() == "leader, epoch 1 (first leader)"
    assert b.tick().startswith("standby: a leads with epoch 1")
    assert (a.term().epoch, b.term()) == (1, None)
    assert "renewed" in a.tick()

    said = until_leads(b)  # a stops renewing, as if it had died
    assert said.startswith("leader, epoch 2: took over from a (epoch 1")
    assert a.tick() == "stepped down: epoch 1 was superseded by epoch 2 of b"
    assert a.term() is None and b.term().epoch == 2
    with db.session_scope() as session:
        row = session.get(ManagerLeader, "manager")
        assert (row.holder, row.holder_address, row.epoch) == ("b", "http://b.test:8000", 2)
        assert row.expires_at > db_now(session)


def test_a_former_leaders_writes_are_refused_and_the_leaders_pass(host):
    a, b = elector("a"), elector("b")
    a.tick()
    with fenced(a.term().epoch):
        rename_host(host, "by-a-while-leading")
    assert host_name(host) == "by-a-while-leading"

    until_leads(b)
    with pytest.raises(NotLeader, match="epoch 1 no longer holds"), fenced(1):
        rename_host(host, "by-a-after-takeover")
    with db.session_scope() as session:
        assert host_name(host) == "by-a-while-leading"
        assert session.scalar(select(Event.message).where(Event.code == "host.updated")
                              .order_by(Event.id.desc()).limit(1)) == "host renamed by-a-while-leading"
    with fenced(b.term().epoch):
        rename_host(host, "by-b")
    assert host_name(host) == "by-b"
    with pytest.raises(NotLeader), fenced(1), db.session_scope() as session:  # an event alone is a write too
        emit(session, "demo.seeded", "no other change")


def fenced_write_in_flight(host_id: str, epoch: int, release: threading.Event) -> tuple[threading.Thread, list]:
    """A thread whose fenced transaction has written and then waits for `release` before committing; the list
    receives the commit's outcome ("committed" or the exception)."""
    wrote, outcome = threading.Event(), []

    def write():
        try:
            with fenced(epoch), db.session_scope() as session:
                session.execute(update(Host).where(Host.id == host_id).values(name="in-flight"))
                wrote.set()
                release.wait(60)
            outcome.append("committed")
        except Exception as exc:
            outcome.append(exc)

    thread = threading.Thread(target=write)
    thread.start()
    assert wrote.wait(30)
    return thread, outcome


def wait_until_expired() -> None:
    """Until the lease has run out by the database's clock."""
    with db.session_scope() as session:
        while session.scalar(select(ManagerLeader.expires_at)) >= db_now(session):
            session.rollback()
            time.sleep(0.1)


def test_a_takeover_waits_for_the_leaders_fenced_transaction_to_end(host):
    """The fence holds the lease row share-locked until the commit: no transaction of the old epoch can commit
    after the new epoch exists."""
    a, b = elector("a", fenced_idle_limit_s=120), elector("b", fenced_idle_limit_s=120)
    a.tick()
    release = threading.Event()
    writer, outcome = fenced_write_in_flight(host, 1, release)
    try:
        wait_until_expired()
        with pytest.raises(OperationalError, match="lock timeout"):
            b.tick()  # blocked behind the share lock: gives up after lock_timeout and tries again later
        assert b.term() is None
    finally:
        release.set()
        writer.join()
    assert outcome == ["committed"] and host_name(host) == "in-flight"
    until_leads(b)
    assert b.term().epoch == 2


def test_a_leader_frozen_inside_a_fenced_transaction_holds_the_takeover_back_for_one_ttl_at_most(host):
    """SIGSTOP in the middle of a fenced transaction: the server ends it once it has been idle for the ttl, the
    standby takes over, and the frozen write never commits."""
    a, b = elector("a"), elector("b")
    a.tick()
    release = threading.Event()
    writer, outcome = fenced_write_in_flight(host, 1, release)
    try:
        until_leads(b)
    finally:
        release.set()
        writer.join()
    assert "idle-in-transaction timeout" in str(outcome[0]) and host_name(host) == "h1"
    assert b.term().epoch == 2


def test_a_clean_stop_hands_the_lease_over_at_once(clean_db):
    a, b = elector("a", ttl_s=600, renew_s=5), elector("b", ttl_s=600, renew_s=5)
    a.tick()
    assert b.tick().startswith("standby")
    a.stop(release=True)
    assert b.tick().startswith("leader, epoch 2: took over from a")


def test_a_restarted_instance_takes_its_own_lease_with_a_new_epoch(clean_db):
    first = elector("a", ttl_s=600, renew_s=5)
    first.tick()
    again = elector("a", ttl_s=600, renew_s=5)  # the same VDI_INSTANCE_ID after a crash: no ttl to wait
    assert again.tick() == "leader, epoch 2: restarted, took its own lease"
    assert first.tick() == "stepped down: epoch 1 was superseded by epoch 2 of a"


def test_singleton_loop_runs_on_the_leader_only_after_its_quiet_period(clean_db):
    a, b = elector("a"), elector("b")
    ticks = []
    on_a = SingletonLoop(a, "t", period=60, tick=lambda: ticks.append("a"), quiet_s=0.0)
    on_b = SingletonLoop(b, "t", period=60, tick=lambda: ticks.append("b"), quiet_s=3600.0)
    assert not on_a.run_once()  # not elected yet
    a.tick()
    b.tick()
    assert on_a.run_once() and not on_b.run_once()
    until_leads(b)
    assert not on_b.run_once()  # b leads, but its quiet period after the takeover has not passed
    assert ticks == ["a"]


def test_a_refused_loop_tick_makes_the_former_leader_step_down(host):
    a, b = elector("a"), elector("b")
    a.tick()
    loop = SingletonLoop(a, "renamer", period=60, tick=lambda: rename_host(host, "by-a"))
    until_leads(b)  # a's loop does not know yet
    assert not loop.run_once()
    assert a.refused_writes == 1 and host_name(host) == "h1"
    assert a.tick().startswith("stepped down")


def test_ha_status_names_the_leader_and_every_instance(clean_db):
    a, b = elector("a"), elector("b")
    a.tick()
    b.tick()
    with db.session_scope() as session:
        report = ha_status(session)
    assert report["leader"]["instance_id"] == "a" and report["epoch"] == 1 and not report["leader"]["expired"]
    assert [(i["instance_id"], i["leader"], i["alive"]) for i in report["instances"]] == \
        [("a", True, True), ("b", False, True)]


def test_the_embedded_sqlite_database_runs_the_same_election(tmp_path, pg_engine):
    from manager.migrate import upgrade

    url = f"sqlite:///{tmp_path / 'vdi.db'}"
    upgrade(url)
    db.configure(url)
    try:
        a, b = elector("a"), elector("b")
        assert a.tick() == "leader, epoch 1 (first leader)"
        assert b.tick().startswith("standby")
        with db.session_scope() as session:
            cluster = Cluster(name="c1")
            session.add(cluster)
        with fenced(1), db.session_scope() as session:
            session.execute(update(Cluster).values(name="c2"))
        with pytest.raises(NotLeader), fenced(7), db.session_scope() as session:
            session.execute(update(Cluster).values(name="c3"))
        with db.session_scope() as session:
            assert session.scalar(select(Cluster.name)) == "c2"
            assert session.execute(text("SELECT count(*) FROM manager_instances")).scalar() == 2
        until_leads(b)
        assert b.term().epoch == 2
    finally:
        db.get_engine().dispose()
        db.configure(engine=pg_engine)


def test_the_leader_forgets_instances_gone_for_a_day(clean_db):
    from manager.models import ManagerInstance

    a = elector("a")
    a.tick()
    with db.session_scope() as session:
        now = db_now(session)
        session.add(ManagerInstance(id="gone", address="", pid=1, started_at=now - dt.timedelta(days=3),
                                    seen_at=now - dt.timedelta(days=2)))
        session.add(ManagerInstance(id="recent", address="", pid=2, started_at=now, seen_at=now - dt.timedelta(hours=1)))
    a.tick()
    with db.session_scope() as session:
        assert set(session.scalars(select(ManagerInstance.id))) == {"a", "recent"}


def test_get_ha_answers_who_leads(client, anon_client):
    """The manager under test leads its database alone; the route needs a credential like every other."""
    body = client.get("/api/v1/ha").json()
    me = body["this_instance"]
    assert me["role"] == "leader" and me["epoch"] == body["epoch"] == body["leader"]["epoch"]
    assert body["leader"]["instance_id"] == me["instance_id"] and not body["leader"]["expired"]
    assert [(i["instance_id"], i["alive"], i["leader"]) for i in body["instances"]] == [(me["instance_id"], True, True)]
    assert me["lease_ttl_seconds"] == 12.0 and me["refused_writes"] == 0
    anon_client.headers.pop("Authorization", None)
    assert anon_client.get("/api/v1/ha").status_code == 401


def test_a_lost_lease_row_comes_back_above_every_epoch_seen(clean_db):
    """The lease row deleted (by hand, a partial restore): the epoch must not start again at 1, or node agents that
    heard a higher one refuse the new leader, and a former leader's writes with a reused epoch would pass."""
    a, b = elector("a", ttl_s=600, renew_s=5), elector("b", ttl_s=600, renew_s=5)
    a.tick()
    again = elector("a", ttl_s=600, renew_s=5)
    assert again.tick() == "leader, epoch 2: restarted, took its own lease"
    with db.session_scope() as session:
        session.execute(text("DELETE FROM manager_leader"))
    fresh = elector("c", ttl_s=600, renew_s=5)  # never saw an epoch itself: reads what the instances recorded
    assert fresh.tick() == "leader, epoch 3 (re-created the lost lease above epoch 2)"
    assert again.tick() == "stepped down: epoch 2 was superseded by epoch 3 of c"

    with db.session_scope() as session:
        session.execute(text("DELETE FROM manager_leader"))
        session.execute(text("DELETE FROM manager_instances"))  # nothing recorded either
    b.learn_epoch(7)  # a node agent's heartbeat said it has heard of epoch 7
    assert b.tick() == "leader, epoch 8 (re-created the lost lease above epoch 7)"
    with db.session_scope() as session:
        assert session.get(ManagerLeader, "manager").epoch == 8
    with fenced(3):  # c's epoch can never be valid again
        with pytest.raises(NotLeader):
            with db.session_scope() as session:
                emit(session, "host.updated", "by c")
    assert b.tick().startswith("leader, epoch 8, renewed")


def test_a_leader_below_the_epoch_the_agents_heard_takes_a_new_term_above_it(clean_db):
    """A restored database's lease row is older than what the node agents heard: they would refuse every call of
    its leader. Their heartbeats say so; the leader gives its term up and takes its own lease again above it."""
    a, b = elector("a", ttl_s=600, renew_s=5), elector("b", ttl_s=600, renew_s=5)
    assert a.tick() == "leader, epoch 1 (first leader)"
    a.learn_epoch(1)  # what it leads with itself: nothing to do
    assert a.tick().startswith("leader, epoch 1, renewed")
    a.learn_epoch(41)
    assert a.tick() == "stepped down: node agents have heard of epoch 41, above epoch 1"
    assert a.term() is None
    assert a.tick() == "leader, epoch 42: restarted, took its own lease"
    assert a.tick().startswith("leader, epoch 42, renewed")
    assert b.tick().startswith("standby: a leads with epoch 42")


def test_heartbeats_carry_the_agents_epoch_to_the_election(client, anon_client):
    """The wiring: a node's heartbeat naming a later epoch than the lease row's brings the leader above it, while
    the heartbeat replies go on naming the epoch of the row (an agent's figure is not passed on to the others)."""
    cluster = client.post("/api/v1/clusters", json={"name": "c"}).json()
    host = client.post("/api/v1/hosts", json={"name": "vs-a", "cluster_id": cluster["id"]}).json()
    before = client.get("/api/v1/ha").json()["epoch"]
    reply = anon_client.post(f"/api/v1/nodes/{host['name']}/heartbeat",
                             headers={"Authorization": f"Bearer {host['agent_token']}"},
                             json={"seq": 1, "domains": [], "leader_epoch": before + 40})
    assert reply.status_code == 200, reply.text
    assert reply.json()["leader_epoch"] == before
    deadline = time.monotonic() + 30  # the election's next pass (every VDI_HA_LEASE_RENEW_SECONDS)
    while client.get("/api/v1/ha").json()["epoch"] != before + 41:
        assert time.monotonic() < deadline, client.get("/api/v1/ha").json()
        time.sleep(0.2)
