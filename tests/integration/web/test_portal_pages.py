"""The self-service portal as a browser gets it: where a login lands, what the portal lists and offers (read through
the broker's my_desktops / my_pools, as GET /api/v1/me/desktops), and that nobody sees another user's desktop."""
from __future__ import annotations

import html

from tests.integration.broker import conftest as broker
from tests.integration.web.conftest import form_login, session_csrf

# The broker tests' fixtures, used as they are (as test_desktop_screenshot does).
API = broker.API
work_dir, node_agents, template_image, uniq, world = (broker.work_dir, broker.node_agents, broker.template_image,
                                                      broker.uniq, broker.world)
hosts_without_heartbeats = broker.hosts_without_heartbeats

PASSWORD = "portal-password-1"


def user_with_password(name: str, *, admin: bool = False) -> str:
    from core.enums import Role
    from manager import db
    from manager.auth import hash_password
    from manager.models import RoleAssignment, User

    with db.session_scope() as s:
        user = User(username=name, domain="local", upn=f"{name}@local", password_hash=hash_password(PASSWORD))
        s.add(user)
        s.flush()
        if admin:
            s.add(RoleAssignment(user_id=user.id, role=Role.HELP_DESK))
        return user.id


def test_a_login_lands_where_the_account_belongs(anon_client, admin_token):
    user_with_password("lena")
    user_with_password("mo", admin=True)
    front = anon_client.get("/", follow_redirects=False)
    assert front.status_code == 303 and front.headers["location"] == "/admin/login"
    landed = anon_client.post("/admin/login", data={"username": "lena@local", "password": PASSWORD},
                              follow_redirects=False)
    assert landed.status_code == 303 and landed.headers["location"] == "/portal"
    assert anon_client.get("/", follow_redirects=False).headers["location"] == "/portal"
    portal = anon_client.get("/portal")
    assert portal.status_code == 200 and "lena@local" in portal.text
    assert "Admin console" not in portal.text  # a user who is not an administrator gets no link to it
    anon_client.cookies.clear()
    assert form_login(anon_client, "mo@local", PASSWORD, "").headers["location"] == "/admin"
    assert anon_client.get("/", follow_redirects=False).headers["location"] == "/admin"
    assert 'href="/portal"' in anon_client.get("/admin").text  # administrators are users too
    assert 'href="/admin">Admin console' in anon_client.get("/portal").text
    anon_client.cookies.clear()
    stranger = anon_client.get("/portal", follow_redirects=False)
    assert stranger.status_code == 303 and stranger.headers["location"] == "/admin/login?next=%2Fportal"


def test_the_portal_lists_only_the_users_own_desktops_with_what_they_allow(world, anon_client):
    world.hosts(1)
    pool_id = world.pool(2, pool_type="time_based", os_type="windows_11", protocols="rdp", ip_prefix="10.31",
                         lease_seconds=600, max_lease_seconds=3600, description="Finance desktops",
                         max_desktops_per_user=2)
    nina = user_with_password("nina")
    olaf = user_with_password("olaf")
    world.entitle(pool_id=pool_id, user_id=nina)
    world.entitle(pool_id=pool_id, user_id=olaf)
    assert form_login(anon_client, "nina@local", PASSWORD, "/portal").status_code == 303
    empty = anon_client.get("/portal").text
    assert "You hold no desktop yet" in empty and "Finance desktops" in empty and "Free</dt><dd>2 of 2" in empty
    got = anon_client.post(f"{API}/broker/connect", json={"pool_id": pool_id, "client": {"protocols": ["rdp"]}},
                           headers={"X-CSRF-Token": session_csrf(anon_client)})
    assert got.status_code == 200, got.text
    page = html.unescape(anon_client.get("/portal").text)
    name = got.json()["desktop_name"]
    assert f'<h3 id="desk-{got.json()["desktop_id"]}">{name}</h3>' in page
    for shown in ("Running", "windows 11", "RDP", "Lease ends", "In use", "Reset allowed", ">Connect<", ">Reboot<",
                  ">Log off<", ">Extend lease<", ">Reset<", "Take another desktop"):
        assert shown in page, shown
    assert "> In the browser</label>" in page and 'value="browser" disabled' not in page
    assert 'id="auto-connect"' in page  # exactly one desktop: auto-connect may be chosen

    anon_client.cookies.clear()
    assert form_login(anon_client, "olaf@local", PASSWORD, "/portal").status_code == 303
    theirs = anon_client.get("/portal").text
    assert name not in theirs and "You hold no desktop yet" in theirs and 'id="auto-connect"' not in theirs
