"""Tags on the search results: each row's tags as links to the search for that tag, the tag control (its own element,
#tag-tools) and row checkboxes for the kinds that can be tagged, only for a role that may tag."""
from __future__ import annotations

import html
import re
from urllib.parse import parse_qs

import pytest

from core.enums import Role
from manager import db
from manager.auth import hash_password
from manager.models import Cluster, Desktop, Host, RoleAssignment, Tag, User
from tests.integration.web.conftest import form_login


@pytest.fixture
def tagged(admin_browser, client):
    with db.session_scope() as session:
        cluster = Cluster(name="c1")
        session.add(cluster)
        session.flush()
        desktops = [Desktop(name=f"desk-{i}") for i in range(3)]
        host = Host(name="h1", agent_token="t", cluster_id=cluster.id)
        tags = [Tag(name="region-eu"), Tag(name="gpu")]
        session.add_all([*desktops, host, *tags])
        session.flush()
        ids = {"desktops": [d.id for d in desktops], "host": host.id, "eu": tags[0].id, "gpu": tags[1].id}
    for tag, kind, objects in (("eu", "desktop", ids["desktops"][:2]), ("gpu", "desktop", ids["desktops"][:1]),
                               ("eu", "host", [ids["host"]])):
        assert client.post(f"/api/v1/tags/{ids[tag]}/objects", json={"kind": kind, "ids": objects}).status_code == 200
    return ids


def _row(page: str, object_id: str) -> str:
    return re.search(rf'<tr data-id="{object_id}">(.*?)</tr>', page, re.S).group(1)


def _tag_queries(fragment: str) -> list[str]:
    return [parse_qs("q=" + html.unescape(m))["q"][0] for m in re.findall(r'<a class="tag" href="/admin\?q=([^"]+)"',
                                                                          fragment)]


def test_rows_show_their_tags_as_searches(admin_browser, tagged):
    page = admin_browser.get("/admin", params={"q": "Vms: name = desk-*"}).text
    assert '<th scope="col">Tags</th>' in page
    assert _tag_queries(_row(page, tagged["desktops"][0])) == ["Vms: tag = gpu", "Vms: tag = region-eu"]
    assert _tag_queries(_row(page, tagged["desktops"][1])) == ["Vms: tag = region-eu"]
    assert _tag_queries(_row(page, tagged["desktops"][2])) == []
    # the link runs the search that finds what was tagged
    found = admin_browser.get("/admin", params={"q": "Vms: tag = region-eu"}).text
    assert 'data-total="2"' in found
    hosts = admin_browser.get("/admin", params={"q": "Hosts:"}).text
    assert _tag_queries(_row(hosts, tagged["host"])) == ["Hosts: tag = region-eu"]


def test_the_tag_control_and_row_selection_for_admins(admin_browser, tagged):
    page = admin_browser.get("/admin", params={"q": "Hosts:"}).text
    assert 'id="tag-tools"' in page and 'data-kind="host"' in page and "/tags.js" in page
    assert '<label for="tag-name">Tag</label>' in page
    assert ">Add tag</button>" in page and ">Remove tag</button>" in page
    assert f'aria-label="Select h1" data-select value="{tagged["host"]}"' in page
    assert 'data-select-all' in page
    # objects that cannot be tagged get neither
    pools = admin_browser.get("/admin", params={"q": "Pools:"}).text
    assert "tag-tools" not in pools and "Tags</th>" not in pools


def test_helpdesk_sees_tags_but_no_tag_control(anon_client, tagged):
    with db.session_scope() as session:
        user = User(username="desk", domain="local", password_hash=hash_password("helpdesk-password"))
        session.add(user)
        session.flush()
        session.add(RoleAssignment(user_id=user.id, role=Role.HELP_DESK))
    anon_client.headers.pop("Authorization", None)
    anon_client.cookies.clear()
    assert form_login(anon_client, "desk@local", "helpdesk-password").status_code == 303
    page = anon_client.get("/admin", params={"q": "Hosts:"}).text
    assert "Tags</th>" in page and _tag_queries(_row(page, tagged["host"])) == ["Hosts: tag = region-eu"]
    assert "tag-tools" not in page and "data-select" not in page
    desktops = anon_client.get("/admin", params={"q": "Vms:"}).text
    assert "tag-tools" not in desktops and "data-select" in desktops  # desktops stay selectable for their actions
