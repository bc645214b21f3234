"""Host maintenance on real node agents: refused while desktops run there (naming them), then no new desktops
are placed on the host, its desktops cannot start and its heartbeats do not bring it back up; activation does,
with an event for each change; only hosts:write may do either."""
from __future__ import annotations

from sqlalchemy import select

from tests.integration.broker.conftest import API, TEST_HOST_MEMORY_MIB, bearer


def _beat(anon_client, agent, host_name: str, seq: int):
    caps = {"hostname": host_name, "domain_types": ["test"], "cpus": 8, "memory_mib": TEST_HOST_MEMORY_MIB,
            "free_memory_mib": TEST_HOST_MEMORY_MIB}
    return anon_client.post(f"{API}/nodes/{host_name}/heartbeat", headers=bearer(agent.node.token),
                            json={"seq": seq, "caps": caps, "domains": []})


def _events(client, code: str, host_id: str) -> list[str]:
    return [e["message"] for e in client.get(f"{API}/events", params={"code": code, "host_id": host_id}).json()["items"]]


def test_maintenance_is_refused_while_desktops_run_then_keeps_the_host_out_of_service(world, client, anon_client,
                                                                                      node_agents):
    a, b = world.hosts(2)
    host_a = client.get(f"{API}/hosts/{a}").json()
    template_id, _ = world.template()
    names = [f"{world.prefix}-m{i}" for i in range(3)]
    desktops = [client.post(f"{API}/desktops/provision", json={"name": n, "template_id": t, "host_id": a}).json()
                for n, t in zip(names, [template_id] * 3)]
    assert all(d["host_id"] == a for d in desktops), desktops
    for d in desktops[:2]:
        assert client.post(f"{API}/desktops/{d['id']}/start").status_code == 200

    refused = client.post(f"{API}/hosts/{a}/maintenance")
    assert refused.status_code == 409, refused.text
    detail = refused.json()["detail"]
    assert detail.startswith(f"2 desktops run on {host_a['name']} ") and detail.endswith("shut them down first")
    assert names[0] in detail and names[1] in detail and names[2] not in detail
    assert client.get(f"{API}/hosts/{a}").json()["status"] == "up"

    for d in desktops[:2]:
        assert client.post(f"{API}/desktops/{d['id']}/poweroff").status_code == 200
    entered = client.post(f"{API}/hosts/{a}/maintenance", json={"reason": "new RAM"})
    assert entered.status_code == 200, entered.text
    assert entered.json()["status"] == "maintenance"
    assert _events(client, "host.maintenance", a) == [
        f"admin@local put host {host_a['name']} into maintenance (it was up): new RAM"]
    again = client.post(f"{API}/hosts/{a}/maintenance")
    assert again.status_code == 409 and "already in maintenance" in again.json()["detail"]

    # No new desktop lands on it: placement takes the other host.
    placed = client.post(f"{API}/desktops/provision", json={"name": f"{world.prefix}-new", "template_id": template_id})
    assert placed.status_code == 201, placed.text
    assert placed.json()["host_id"] == b
    pinned = client.post(f"{API}/desktops/provision", json={"name": f"{world.prefix}-pin", "template_id": template_id,
                                                            "host_id": a})
    assert pinned.status_code == 409 and "in maintenance: it takes no new desktops" in pinned.json()["detail"]
    # Its desktops cannot start, and the refusal says why.
    start = client.post(f"{API}/desktops/{desktops[2]['id']}/start")
    assert start.status_code >= 400 and "maintenance" in start.json()["detail"], start.text
    assert client.get(f"{API}/desktops/{desktops[2]['id']}").json()["task_state"] is None
    # Its heartbeats keep coming and it stays in maintenance.
    beat = _beat(anon_client, node_agents[0], host_a["name"], seq=1)
    assert beat.status_code == 200, beat.text
    assert client.get(f"{API}/hosts/{a}").json()["status"] == "maintenance"
    assert _events(client, "host.up", a) == []

    active = client.post(f"{API}/hosts/{a}/activate")
    assert active.status_code == 200, active.text
    assert active.json()["status"] == "up"  # it sent a heartbeat a moment ago
    assert _events(client, "host.activated", a) == [f"admin@local activated host {host_a['name']}: it is up"]
    not_in = client.post(f"{API}/hosts/{a}/activate")
    assert not_in.status_code == 409 and "is up, not in maintenance" in not_in.json()["detail"]
    assert client.post(f"{API}/desktops/{desktops[2]['id']}/start").status_code == 200


def test_a_silent_host_is_activated_non_responsive_until_it_sends_a_heartbeat(world, client, anon_client,
                                                                             node_agents):
    import datetime as dt

    from manager import db
    from manager.models import Host

    (a,) = world.hosts(1)
    name = client.get(f"{API}/hosts/{a}").json()["name"]
    assert client.post(f"{API}/hosts/{a}/maintenance").status_code == 200
    with db.session_scope() as s:  # the node agent has been silent for longer than VDI_HOST_DEAD_AFTER_SECONDS
        s.get(Host, a).last_heartbeat_at = dt.datetime.now(dt.timezone.utc) - dt.timedelta(days=3)
    active = client.post(f"{API}/hosts/{a}/activate")
    assert active.status_code == 200 and active.json()["status"] == "non_responsive", active.text
    assert "until its node agent sends a heartbeat" in _events(client, "host.activated", a)[0]
    assert _beat(anon_client, node_agents[0], name, seq=1).status_code == 200
    assert client.get(f"{API}/hosts/{a}").json()["status"] == "up"
    assert _events(client, "host.up", a) == [f"host {name} is up (heartbeat received)"]


def test_maintenance_needs_hosts_write(world, client, anon_client):
    (a,) = world.hosts(1)
    _, helpdesk = world.user(f"{world.prefix}-hd", roles=("HelpDesk",))
    _, desktop_admin = world.user(f"{world.prefix}-da", roles=("DesktopAdmin",))
    for token in (helpdesk, desktop_admin):
        for verb in ("maintenance", "activate"):
            response = anon_client.post(f"{API}/hosts/{a}/{verb}", headers=bearer(token))
            assert response.status_code == 403, (verb, response.text)
    assert client.get(f"{API}/hosts/{a}").json()["status"] == "up"
    missing = client.post(f"{API}/hosts/00000000-0000-0000-0000-000000000000/maintenance")
    assert missing.status_code == 404 and "host" in missing.json()["detail"]
    unknown_field = client.post(f"{API}/hosts/{a}/maintenance", json={"why": "x"})
    assert unknown_field.status_code == 422


def test_a_heartbeat_stored_while_the_host_enters_maintenance_does_not_bring_it_back(world, client, node_agents):
    """The heartbeat read the host as non-responsive; an administrator put it into maintenance before the
    heartbeat's transaction wrote anything: the host stays in maintenance."""
    from core.enums import HostStatus
    from manager import db
    from manager.heartbeat import ingest_heartbeat
    from manager.host_maintenance import enter_maintenance
    from manager.models import Host

    (a,) = world.hosts(1)
    with db.session_scope() as s:
        s.get(Host, a).status = HostStatus.NON_RESPONSIVE
    with db.session_scope() as beat:
        host = beat.scalar(select(Host).where(Host.id == a))  # as the heartbeat route reads it
        with db.session_scope() as admin:
            enter_maintenance(admin, a, actor="admin@local")
        ingest_heartbeat(beat, host, {"seq": 1, "domains": []})
    with db.session_scope() as s:
        assert s.get(Host, a).status == HostStatus.MAINTENANCE


def test_the_broker_hands_out_no_fresh_desktop_on_a_host_in_maintenance(world, client, anon_client):
    """A pool with one desktop on each host, one host in maintenance: a user gets the desktop on the other host, the
    next user is told the pool is full rather than given a desktop that cannot start; the first user keeps theirs."""
    from manager import db
    from manager.models import Desktop

    a, b = world.hosts(2)
    pool_id = world.pool(2, os_type="windows_11", protocols="rdp", ip_prefix="10.7",
                         name=f"{world.prefix}-mpool")
    with db.session_scope() as s:
        desktops = s.query(Desktop).filter_by(pool_id=pool_id).order_by(Desktop.name).all()
        for desktop, host_id in zip(desktops, (a, b)):
            desktop.host_id = host_id
        on_a, on_b = desktops[0].id, desktops[1].id
    assert client.post(f"{API}/hosts/{a}/maintenance").status_code == 200
    users = [world.user(f"{world.prefix}-u{i}") for i in range(2)]
    for user_id, _ in users:
        world.entitle(pool_id=pool_id, user_id=user_id)
    body = {"pool_id": pool_id, "client": {"protocols": ["rdp"], "address": "198.51.100.7"}}

    first = anon_client.post(f"{API}/broker/connect", json=body, headers=bearer(users[0][1]))
    assert first.status_code == 200, first.text
    assert first.json()["desktop_id"] == on_b
    second = anon_client.post(f"{API}/broker/connect", json=body, headers=bearer(users[1][1]))
    assert second.status_code == 409 and second.json()["error"] == "pool_full", second.text
    again = anon_client.post(f"{API}/broker/connect", json=body, headers=bearer(users[0][1]))
    assert again.status_code == 200 and again.json()["desktop_id"] == on_b, again.text

    assert client.post(f"{API}/hosts/{a}/activate").status_code == 200
    third = anon_client.post(f"{API}/broker/connect", json=body, headers=bearer(users[1][1]))
    assert third.status_code == 200 and third.json()["desktop_id"] == on_a, third.text


def _stuck_in_a_dead_drain(world, client, on_target_too: bool) -> tuple[str, str, str]:
    """A running desktop on host a, a in maintenance, the desktop MIGRATING as the claim of a drain whose runner
    died mid-move left it (no desktops.migrate job holds it); with `on_target_too`, the move had completed: libvirt
    on b has the domain. Returns (a, b, desktop id)."""
    from core.enums import HostStatus, TaskState
    from manager import db
    from manager.models import Desktop, Host
    from manager.node_reconcile import define_missing

    a, b = world.hosts(2)
    template_id, _ = world.template()
    desktop = client.post(f"{API}/desktops/provision", json={"name": f"{world.prefix}-mv", "template_id": template_id,
                                                             "host_id": a}).json()
    assert client.post(f"{API}/desktops/{desktop['id']}/start").status_code == 200
    if on_target_too:
        with db.session_scope() as s:
            s.get(Desktop, desktop["id"]).host_id = b
        assert define_missing(b, desktop["id"], actor="test")
    with db.session_scope() as s:
        row = s.get(Desktop, desktop["id"])
        row.host_id, row.task_state = a, TaskState.MIGRATING
        s.get(Host, a).status = HostStatus.MAINTENANCE
    return a, b, desktop["id"]


def _resumed_drain(client, host_id: str) -> dict:
    from manager import db
    from manager.models import Host
    from manager.provisioning.migration import request_drain
    from tests.integration.broker.conftest import job_ended

    with db.session_scope() as s:
        job_id = request_drain(s, s.get(Host, host_id), actor="test").id
    return job_ended(client, job_id)


def test_a_resumed_drain_settles_the_move_its_dead_runner_completed(world, client):
    a, b, desktop_id = _stuck_in_a_dead_drain(world, client, on_target_too=True)
    job = _resumed_drain(client, a)
    assert job["state"] == "succeeded" and job["result"]["migrated"] == [f"{world.prefix}-mv"], job
    desktop = client.get(f"{API}/desktops/{desktop_id}").json()
    assert (desktop["host_id"], desktop["task_state"]) == (b, None), desktop


def test_a_resumed_drain_frees_a_move_that_never_happened_and_moves_it_again(world, client):
    a, _b, desktop_id = _stuck_in_a_dead_drain(world, client, on_target_too=False)
    job = _resumed_drain(client, a)
    # The desktop is no longer stuck: the drain claimed it again and tried (libvirt's test driver cannot migrate,
    # so this move fails and says why instead of "busy migrating").
    failure = job["result"]["failed"].get(f"{world.prefix}-mv", "")
    print("the move's failure:", failure)
    assert job["state"] == "succeeded" and failure and "busy" not in failure and "migrating" not in failure, job
    desktop = client.get(f"{API}/desktops/{desktop_id}").json()
    assert (desktop["host_id"], desktop["task_state"]) == (a, None), desktop
