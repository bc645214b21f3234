"""Heartbeats: node-token auth, batch stats ingest, state transitions as events, silent hosts marked once."""
from __future__ import annotations

import datetime as dt

from sqlalchemy import func, select, text

from core.enums import HostStatus, PowerState
from manager import db
from manager.models import Desktop, Event, Host

API = "/api/v1"


def _host_and_desktops(client, n=3):
    cluster = client.post(f"{API}/clusters", json={"name": "c"}).json()
    host = client.post(f"{API}/hosts", json={"name": "vs-a", "cluster_id": cluster["id"]}).json()
    with db.session_scope() as s:  # records only (POST /desktops would provision them on a host)
        rows = [Desktop(name=f"d{i}") for i in range(n)]
        s.add_all(rows)
        s.flush()
        desktops = [{"id": d.id, "name": d.name} for d in rows]
    return host, desktops


def _beat(client, host, domains, seq=1):
    return client.post(f"{API}/nodes/{host['name']}/heartbeat", headers={"Authorization": f"Bearer {host['agent_token']}"},
                       json={"seq": seq, "agent_started_at": "2026-11-22T10:00:00+00:00", "cpu_usage": 37,
                             "mem_usage": 52,
                             "caps": {"hostname": "vs-a", "domain_types": ["qemu"], "cpus": 2, "memory_mib": 24000,
                                      "free_memory_mib": 20000, "ksm_running": True, "ksm_pages_sharing": 10},
                             "domains": domains})


def test_heartbeat_stores_stats_and_transitions(client, anon_client):
    host, desktops = _host_and_desktops(client)
    domains = [{"uuid": d["id"], "name": d["name"], "state": "up", "cpu_usage": 10 * i, "mem_usage": 5 + i}
               for i, d in enumerate(desktops)]
    domains.append({"uuid": "ffffffff-0000-0000-0000-000000000000", "name": "foreign", "state": "up"})
    response = _beat(anon_client, host, domains)
    assert response.status_code == 200, response.text
    # the reply also names the leader epoch this manager knows (it leads its test database alone: epoch 1)
    assert response.json() == {"ok": True, "desktops": 3, "transitions": 3, "unknown": 1, "foreign": 0,
                               "leader_epoch": 1}
    got = {d["name"]: d for d in client.get(f"{API}/desktops").json()["items"]}
    assert [got[f"d{i}"]["cpu_usage"] for i in range(3)] == [0, 10, 20]
    assert all(got[f"d{i}"]["power_state"] == "up" and got[f"d{i}"]["host_id"] == host["id"] for i in range(3))
    h = client.get(f"{API}/hosts/{host['id']}").json()
    assert (h["status"], h["cpu_usage"], h["mem_usage"], h["ksm_pages_sharing"]) == ("up", 37, 52, 10)
    # The same report again changes figures but records no new transition.
    domains[0]["cpu_usage"] = 99
    assert _beat(anon_client, host, domains, seq=2).json()["transitions"] == 0
    with db.session_scope() as session:
        codes = session.scalars(select(Event.code).where(Event.code.in_(["desktop.state_changed", "host.up"]))).all()
        assert sorted(codes) == ["desktop.state_changed"] * 3 + ["host.up"]
        assert session.get(Desktop, desktops[0]["id"]).cpu_usage == 99
    # One desktop pauses while the others keep running: one transition, and everyone's figures are stored.
    domains[1]["state"], domains[1]["cpu_usage"], domains[2]["mem_usage"] = "paused", 0, 77
    assert _beat(anon_client, host, domains, seq=3).json() == {"ok": True, "desktops": 3, "transitions": 1,
                                                                "unknown": 1, "foreign": 0, "leader_epoch": 1}
    with db.session_scope() as session:
        ids = [d["id"] for d in desktops]
        stored = {d.name: d for d in session.scalars(select(Desktop).where(Desktop.id.in_(ids)))}
        assert (stored["d1"].power_state.value, stored["d1"].cpu_usage) == ("paused", 0)
        assert (stored["d0"].power_state.value, stored["d0"].cpu_usage) == ("up", 99)
        assert (stored["d2"].power_state.value, stored["d2"].mem_usage) == ("up", 77)
        assert session.scalar(select(func.count()).select_from(Event).where(
            Event.code == "desktop.state_changed", Event.desktop_id == desktops[1]["id"])) == 2


def test_a_node_cannot_claim_another_hosts_desktop_through_its_heartbeat(client, anon_client):
    """Issue 22 item 11: host vs-a's token reported vs-b's desktops and took them over (host_id, power state).
    A node speaks only for its own desktops: the report is ignored and a warning event (one, not one per beat)
    names the host."""
    host, (theirs, running) = _host_and_desktops(client, n=2)
    other = client.post(f"{API}/hosts", json={"name": "vs-b", "cluster_id": host["cluster_id"]}).json()
    with db.session_scope() as session:
        for desktop_id, state in ((theirs["id"], PowerState.DOWN), (running["id"], PowerState.UP)):
            desktop = session.get(Desktop, desktop_id)
            desktop.host_id, desktop.power_state = other["id"], state
    # one report that would be a transition (down -> up), one that matches the stored state (the batch path)
    domains = [{"uuid": theirs["id"], "name": theirs["name"], "state": "up", "cpu_usage": 50},
               {"uuid": running["id"], "name": running["name"], "state": "up", "cpu_usage": 60}]
    for seq in (1, 2):
        answer = _beat(anon_client, host, domains, seq=seq)
        assert answer.json() == {"ok": True, "desktops": 0, "transitions": 0, "unknown": 0, "foreign": 2,
                                 "leader_epoch": 1}
    with db.session_scope() as session:
        stored = [session.get(Desktop, d["id"]) for d in (theirs, running)]
        assert [(d.host_id, d.power_state, d.cpu_usage) for d in stored] == [
            (other["id"], PowerState.DOWN, 0), (other["id"], PowerState.UP, 0)]
        warnings = session.execute(select(Event.desktop_id, Event.severity, Event.message)
                                   .where(Event.code == "host.foreign_desktop")).all()
    assert sorted(w.desktop_id for w in warnings) == sorted([theirs["id"], running["id"]])  # once each, not per beat
    assert all(w.severity.value == "warning" and "vs-a" in w.message for w in warnings)


def test_heartbeat_needs_the_hosts_own_token(client, anon_client):
    host, _ = _host_and_desktops(client, n=0)
    bad = anon_client.post(f"{API}/nodes/vs-a/heartbeat", headers={"Authorization": "Bearer wrong"}, json={})
    assert bad.status_code == 401
    admin_token_is_not_a_node_token = client.post(f"{API}/nodes/vs-a/heartbeat", json={})
    assert admin_token_is_not_a_node_token.status_code == 401
    assert anon_client.post(f"{API}/nodes/nope/heartbeat", json={}).status_code == 401


def test_the_database_holds_no_usable_node_token(client, anon_client):
    """Issue 22 item 8: whoever reads the hosts table gets nothing a heartbeat accepts; the real token still works."""
    host, _ = _host_and_desktops(client, n=0)
    with db.session_scope() as session:
        row = dict(session.execute(text("SELECT * FROM hosts WHERE id = :id"), {"id": host["id"]}).mappings().one())
    assert host["agent_token"] not in " ".join(str(v) for v in row.values())
    for stolen in row.values():
        if isinstance(stolen, str) and stolen:
            response = _beat(anon_client, {**host, "agent_token": stolen}, [])
            assert response.status_code == 401, stolen
    assert _beat(anon_client, host, []).status_code == 200


def test_guest_facts_are_stored_and_found_by_the_search(client, anon_client):
    """Issue 21 item 4: what the guest agents report (only on changes) lands in the desktop's record: the address
    clients connect to (IPv4 before IPv6), host name, logged-in users, installed applications; `apps = *office*`
    finds the desktop whatever the case. A report for a desktop placed on another host is ignored."""
    host, (mine, theirs) = _host_and_desktops(client, n=2)
    other = client.post(f"{API}/hosts", json={"name": "vs-b", "cluster_id": host["cluster_id"]}).json()
    with db.session_scope() as session:
        session.get(Desktop, theirs["id"]).host_id = other["id"]
    facts = {"ips": ["fe80::5054:ff:fe12:3456", "fec0::5054:ff:fe12:3456", "169.254.3.4", "10.0.2.15"],
             "hostname": "mine-guest", "users": ["user", "alice"], "apps": ["LibreOffice 7.4", "Office Viewer 1.2"]}
    domains = [{"uuid": d["id"], "name": d["name"], "state": "up"} for d in (mine, theirs)]
    response = anon_client.post(
        f"{API}/nodes/{host['name']}/heartbeat", headers={"Authorization": f"Bearer {host['agent_token']}"},
        json={"seq": 1, "agent_started_at": "2026-11-22T10:00:00+00:00", "domains": domains,
              "guest": {mine["id"]: facts, theirs["id"]: facts, "not-a-desktop": facts, mine["name"]: "junk"}})
    assert response.status_code == 200, response.text
    got = client.get(f"{API}/desktops/{mine['id']}").json()
    assert (got["ip"], got["guest_hostname"], got["logged_in_user"], got["installed_apps"]) == \
        ("10.0.2.15", "mine-guest", "user,alice", "LibreOffice 7.4,Office Viewer 1.2")
    assert client.get(f"{API}/desktops/{theirs['id']}").json()["ip"] == ""
    for query in ("Vms: apps = *office*", "Vms: apps = *OFFICE*", "Vms: ip = 10.0.2.15",
                  "Vms: loggedinuser = *alice*"):
        found = client.get(f"{API}/search", params={"q": query}).json()
        assert [row["name"] for row in found["items"]] == [mine["name"]], query
    # the next report, after the users logged off: the address stays, nobody is logged in
    _beat(anon_client, host, domains, seq=2)  # a beat without facts changes none of them
    anon_client.post(f"{API}/nodes/{host['name']}/heartbeat",
                     headers={"Authorization": f"Bearer {host['agent_token']}"},
                     json={"seq": 3, "domains": domains, "guest": {mine["id"]: {**facts, "users": []}}})
    got = client.get(f"{API}/desktops/{mine['id']}").json()
    assert (got["ip"], got["logged_in_user"]) == ("10.0.2.15", "")
    # alice logs in again, then the desktop stops: nobody is logged in on it any more
    anon_client.post(f"{API}/nodes/{host['name']}/heartbeat",
                     headers={"Authorization": f"Bearer {host['agent_token']}"},
                     json={"seq": 4, "domains": domains, "guest": {mine["id"]: {**facts, "users": ["alice"]}}})
    assert client.get(f"{API}/desktops/{mine['id']}").json()["logged_in_user"] == "alice"
    _beat(anon_client, host, [{**domains[0], "state": "down"}], seq=5)
    got = client.get(f"{API}/desktops/{mine['id']}").json()
    assert (got["power_state"], got["logged_in_user"], got["installed_apps"]) == \
        ("down", "", "LibreOffice 7.4,Office Viewer 1.2")
