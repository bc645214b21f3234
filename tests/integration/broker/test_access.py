"""Entitlement through nested groups, and isolation: a user never sees or reaches another user's desktop,
session or console. Admin console access is an event; the ticket password is never logged or stored."""
from __future__ import annotations

import logging

from sqlalchemy import select

from tests.integration.broker.conftest import API, bearer

RDP = {"protocols": ["rdp"]}


def test_entitlement_through_nested_groups_and_cycles(world, anon_client):
    from broker import entitlement
    from manager import db

    world.hosts(1)
    pool_id = world.pool(2, os_type="windows_11", protocols="rdp", ip_prefix="10.3")
    top = world.group("all-staff")
    middle = world.group("engineering", parents=(top,))
    leaf = world.group("eng-berlin", parents=(middle,))
    loop = world.group("loop", parents=(leaf,))
    from manager.models import GroupGroupMembership
    with db.session_scope() as s:  # a cycle, as AD allows: leaf -> loop -> leaf
        s.add(GroupGroupMembership(parent_id=loop, child_id=leaf))
    world.entitle(pool_id=pool_id, group_id=top)
    inside, inside_token = world.user("hanna", groups=(leaf,))
    outside, outside_token = world.user("ivan")

    with db.session_scope() as s:
        assert entitlement.entitled_pool_ids(s, inside) == {pool_id}
        assert entitlement.entitled_pool_ids(s, outside) == set()
    ok = anon_client.post(f"{API}/broker/connect", json={"pool_id": pool_id, "client": RDP},
                          headers=bearer(inside_token))
    assert ok.status_code == 200, ok.text
    refused = anon_client.post(f"{API}/broker/connect", json={"pool_id": pool_id, "client": RDP},
                               headers=bearer(outside_token))
    assert refused.status_code == 404 and refused.json()["error"] == "not_found"  # not entitled: not there for ivan
    assert [p["id"] for p in anon_client.get(f"{API}/me/pools", headers=bearer(inside_token)).json()] == [pool_id]
    assert anon_client.get(f"{API}/me/pools", headers=bearer(outside_token)).json() == []


def test_a_pool_a_user_may_not_use_answers_as_a_missing_one(world, anon_client):
    """Issue 22 item 11: a plain user could tell a real pool (403 not_entitled) from a missing one (404). Every
    route a User can call with a pool in it answers the same for a pool they may not use as for none."""
    import uuid

    from manager.api.guard import api_routes

    world.hosts(1)
    pool_id = world.pool(1, os_type="windows_11", protocols="rdp", ip_prefix="10.4")
    _, token = world.user("lena")
    missing = str(uuid.uuid4())
    with_pool = [(path, method) for path, route in api_routes(anon_client.app) if "{pool_id}" in path
                 for method in sorted(getattr(route, "methods", None) or ())]
    assert with_pool, "no route names a pool"
    for path, method in with_pool:
        answers = [anon_client.request(method, path.replace("{pool_id}", p), json={}, headers=bearer(token))
                   for p in (pool_id, missing)]
        assert answers[0].status_code == answers[1].status_code, (method, path, answers[0].text)
    from manager import db
    from manager.models import Pool

    with db.session_scope() as s:
        name = s.get(Pool, pool_id).name
    for key, real, absent in [("pool_id", pool_id, missing), ("pool", name, "no-such-pool")]:
        answers = [anon_client.post(f"{API}/broker/connect", json={key: value, "client": RDP}, headers=bearer(token))
                   for value in (real, absent)]
        assert [a.status_code for a in answers] == [404, 404], [a.text for a in answers]
        # the same words, but for the key the user gave
        assert answers[0].json() == {k: v.replace(absent, real) for k, v in answers[1].json().items()}


def test_a_user_cannot_see_or_reach_another_users_desktop(world, anon_client):
    world.hosts(1)
    pool_id = world.pool(2, os_type="windows_11", protocols="rdp,spice", ip_prefix="10.2")
    a, a_token = world.user("judy")
    b, b_token = world.user("kim")
    world.entitle(pool_id=pool_id, user_id=a)
    world.entitle(pool_id=pool_id, user_id=b)
    mine = anon_client.post(f"{API}/broker/connect", json={"pool_id": pool_id, "client": RDP},
                            headers=bearer(a_token)).json()
    theirs = anon_client.post(f"{API}/broker/connect", json={"pool_id": pool_id, "client": RDP},
                              headers=bearer(b_token)).json()
    assert mine["desktop_id"] != theirs["desktop_id"]

    # b cannot connect to a's desktop by id, nor download a console file of a's session, nor end it
    by_id = anon_client.post(f"{API}/broker/connect", json={"desktop_id": mine["desktop_id"], "client": RDP},
                             headers=bearer(b_token))
    assert by_id.status_code == 404 and mine["desktop_id"] in by_id.json()["detail"]
    for method, path, body in [
        ("GET", f"/broker/sessions/{mine['session_id']}/console-file", None),
        ("POST", "/broker/logoff", {"session_id": mine["session_id"]}),
        ("POST", "/broker/disconnect", {"session_id": mine["session_id"]}),
    ]:
        r = anon_client.request(method, f"{API}{path}", json=body, headers=bearer(b_token))
        assert r.status_code == 404, (path, r.text)
    # b's views list only b's things
    b_desktops = anon_client.get(f"{API}/me/desktops", headers=bearer(b_token)).json()
    assert [d["id"] for d in b_desktops] == [theirs["desktop_id"]]
    assert [s["id"] for s in anon_client.get(f"{API}/me/sessions", headers=bearer(b_token)).json()] \
        == [theirs["session_id"]]
    # and no admin route is open to a plain user
    for path in ("/sessions", f"/desktops/{mine['desktop_id']}/console", f"/desktops/{mine['desktop_id']}",
                 "/desktops"):
        assert anon_client.get(f"{API}{path}", headers=bearer(b_token)).status_code == 403, path
    assert anon_client.post(f"{API}/desktops/{mine['desktop_id']}/poweroff",
                            headers=bearer(b_token)).status_code == 403
    # a's session is untouched by all that
    assert anon_client.get(f"{API}/me/sessions", headers=bearer(a_token)).json()[0]["state"] == "connected"


def test_dedicated_and_shared_desktops(world, client, anon_client):
    world.hosts(1)
    template_id, _version = world.template("windows_11")
    a, a_token = world.user("lena")
    b, b_token = world.user("max")
    c, c_token = world.user("nina")
    made = client.post(f"{API}/desktops/provision", json={"name": f"{world.prefix}-shared", "template_id": template_id,
                                                          "console_protocols": "rdp", "user_ids": [a, b]})
    assert made.status_code == 201, made.text
    desktop_id = made.json()["id"]
    from manager import db
    from manager.models import Desktop
    with db.session_scope() as s:
        s.get(Desktop, desktop_id).ip = "10.1.0.9"
    for token in (a_token, b_token):
        r = anon_client.post(f"{API}/broker/connect", json={"desktop_id": desktop_id, "client": RDP},
                             headers=bearer(token))
        assert r.status_code == 200 and r.json()["assignment"] == "direct", r.text
    outsider = anon_client.post(f"{API}/broker/connect", json={"desktop_id": desktop_id, "client": RDP},
                                headers=bearer(c_token))
    assert outsider.status_code == 404
    assert client.delete(f"{API}/desktops/{desktop_id}/users/{b}").status_code == 204
    assert anon_client.post(f"{API}/broker/connect", json={"desktop_id": desktop_id, "client": RDP},
                            headers=bearer(b_token)).status_code == 404


def test_admin_console_needs_helpdesk_and_is_an_event(world, anon_client, caplog):
    from manager import db
    from manager.models import Event

    world.hosts(1)
    pool_id = world.pool(1, os_type="windows_11", protocols="rdp", ip_prefix="10.0")
    user, user_token = world.user("olga")
    _helpdesk, hd_token = world.user("helper", roles=("HelpDesk",))
    world.entitle(pool_id=pool_id, user_id=user)
    got = anon_client.post(f"{API}/broker/connect", json={"pool_id": pool_id, "client": RDP},
                           headers=bearer(user_token)).json()
    caplog.set_level(logging.DEBUG)
    console = anon_client.get(f"{API}/desktops/{got['desktop_id']}/console", params={"protocol": "rdp"},
                              headers=bearer(hd_token))
    assert console.status_code == 200, console.text
    assert console.json()["console"]["host"] == "10.0.0.1"
    with db.session_scope() as s:
        access = s.scalars(select(Event).where(Event.code == "console.admin_access")).all()
        assert len(access) == 1 and access[0].actor == "helper@local" and access[0].user_id == user
        assert "olga@local" in access[0].message and access[0].severity.value == "warning"
        codes = [e.code for e in s.scalars(select(Event).where(Event.desktop_id == got["desktop_id"]))]
    assert {"broker.assigned", "broker.connected", "console.ticket", "console.admin_access"} <= set(codes)
