"""Object pages: each kind shows its facts and links to its related objects, an Events tab with that object's
events only (newest first, paged), a 404 page for an unknown id and a 403 page without the read permission; what a
HelpDesk user sees."""
from __future__ import annotations

import html
import re
from dataclasses import dataclass

import pytest
from sqlalchemy import select

from core.enums import HostStatus, JobState, OsType, PoolType, PowerState, Role, SessionState, Severity
from event_manager.service import emit
from manager import db
from manager.auth import hash_password
from manager.models import (Assignment, Cluster, Desktop, DesktopSession, Entitlement, Event, Group,
                            GroupGroupMembership, Host, Job, Pool, RoleAssignment, Snapshot, Template,
                            TemplateVersion, User, UserGroupMembership, Volume, utcnow)
from tests.integration.web.conftest import form_login


@dataclass
class Inventory:
    cluster: str
    host: str
    other_host: str
    template: str
    version: str
    pool: str
    desktop: str
    other_desktop: str
    carol: str
    group: str
    parent_group: str
    job: str
    event: int


def _user(session, name: str, password: str | None = None, role: Role | None = None) -> User:
    user = User(username=name, domain="local", upn=f"{name}@local", display_name=name.title(),
                password_hash=hash_password(password) if password else "")
    session.add(user)
    session.flush()
    if role is not None:
        session.add(RoleAssignment(user_id=user.id, role=role))
    return user


@pytest.fixture
def inventory(admin_browser) -> Inventory:
    """A small estate: a host with a pooled desktop held by carol (who is in a group, entitled through it, with a
    session and a snapshot), another host and desktop, a template with two versions, a job and events."""
    with db.session_scope() as s:
        cluster = Cluster(name="web-cluster")
        s.add(cluster)
        s.flush()
        host = Host(name="vs-obj-a", cluster_id=cluster.id, address="10.0.0.5", status=HostStatus.UP, cpus=16,
                    memory_mib=65536, free_memory_mib=32768, cpu_model="EPYC", agent_url="http://10.0.0.5:8444")
        other_host = Host(name="vs-obj-b", cluster_id=cluster.id, status=HostStatus.MAINTENANCE)
        template = Template(name="Win 11 base", os_type=OsType.WINDOWS_11, cpus=2, memory_mib=4096)
        s.add_all([host, other_host, template])
        s.flush()
        v1 = TemplateVersion(template_id=template.id, number=1, name="gold")
        v2 = TemplateVersion(template_id=template.id, number=2, name="april patches")
        s.add_all([v1, v2])
        s.flush()
        template.latest_version_id = v2.id
        pool = Pool(name="finance", pool_type=PoolType.AUTOMATIC, template_id=template.id, size=2,
                    name_pattern="fin-##")
        s.add(pool)
        s.flush()
        carol = _user(s, "carol")
        group = Group(name="finance-staff", description="Finance department")
        parent = Group(name="all-staff")
        s.add_all([group, parent])
        s.flush()
        s.add_all([UserGroupMembership(user_id=carol.id, group_id=group.id),
                   GroupGroupMembership(parent_id=parent.id, child_id=group.id),
                   Entitlement(group_id=group.id, pool_id=pool.id),
                   RoleAssignment(group_id=group.id, role=Role.HELP_DESK)])
        desktop = Desktop(name="fin-01", host_id=host.id, pool_id=pool.id, template_version_id=v2.id,
                          power_state=PowerState.UP, assigned_user_id=carol.id, assigned_at=utcnow(), ip="10.1.0.7",
                          cpus=2, memory_mib=4096, console_protocols="spice,rdp", os_type=OsType.WINDOWS_11)
        other = Desktop(name="fin-02", host_id=other_host.id, pool_id=pool.id, template_version_id=v1.id)
        s.add_all([desktop, other])
        s.flush()
        s.add(Assignment(desktop_id=desktop.id, user_id=carol.id, kind="pool"))
        s.add(DesktopSession(desktop_id=desktop.id, user_id=carol.id, pool_id=pool.id, protocol="spice",
                             client_address="192.0.2.44", state=SessionState.CONNECTED, connected_at=utcnow()))
        volume = Volume(path="/nonexistent/fin-01/snap-1.qcow2", role="snapshot", desktop_id=desktop.id)
        s.add(volume)
        s.flush()
        s.add(Snapshot(desktop_id=desktop.id, volume_id=volume.id, name="before-office-update"))
        job = Job(kind="desktops.reset", state=JobState.RUNNING, description="reset desktop fin-01", progress=40,
                  done=2, total=5, created_by="admin@local", target_kind="desktop", target_id=desktop.id,
                  params={"desktop_id": desktop.id}, started_at=utcnow())
        s.add(job)
        s.flush()
        emit(s, "desktop.started", "desktop fin-01 started", desktop_id=desktop.id, host_id=host.id, pool_id=pool.id,
             user_id=carol.id, job_id=job.id, correlation_id="op-1")
        emit(s, "desktop.started", "desktop fin-02 started", desktop_id=other.id, host_id=other_host.id)
        emit(s, "template.updated", "template Win 11 base changed", template_id=template.id, correlation_id="op-1",
             severity=Severity.WARNING)
        ids = (cluster.id, host.id, other_host.id, template.id, v2.id, pool.id, desktop.id, other.id, carol.id,
               group.id, parent.id, job.id)
    with db.session_scope() as s:
        event_id = s.scalar(select(Event.id).where(Event.message == "desktop fin-01 started"))
    return Inventory(*ids, event_id)


def links(page: str) -> set[str]:
    return set(re.findall(r'href="(/admin/[^"?#]+)', page))


def test_a_desktop_page_shows_its_facts_and_related_objects(admin_browser, inventory):
    i = inventory
    response = admin_browser.get(f"/admin/desktops/{i.desktop}")
    assert response.status_code == 200 and "text/html" in response.headers["content-type"]
    page = response.text
    assert f'data-kind="desktop" data-id="{i.desktop}"' in page
    assert '<h1 id="object-title">fin-01</h1>' in page and "<dt>IP address</dt><dd>10.1.0.7</dd>" in page
    assert {f"/admin/hosts/{i.host}", f"/admin/pools/{i.pool}", f"/admin/templates/{i.template}",
            f"/admin/users/{i.carol}"} <= links(page)
    assert f'href="/admin/templates/{i.template}#version-2">version 2 (april patches)</a>' in page
    assert "192.0.2.44" in page and "before-office-update" in page  # its session and its snapshot
    assert '<img alt="Screen of fin-01"' in page and ">Open console</button>" in page
    assert 'class="object-actions"' in page  # where the action toolbar goes
    assert 'role="tab" id="object-tab-events"' in page and ">Events</a>" in page


def test_a_host_page_lists_its_desktops_as_the_search_does(admin_browser, client, inventory):
    i = inventory
    page = admin_browser.get(f"/admin/hosts/{i.host}").text
    assert f"/admin/desktops/{i.desktop}" in links(page) and f"/admin/desktops/{i.other_desktop}" not in links(page)
    query = "Vms: Hosts.name = vs-obj-a"
    assert client.get("/api/v1/search", params={"q": query}).json()["total"] == 1
    assert f"<code>{html.escape(query)}</code>" in page and "<dt>CPU model</dt><dd>EPYC</dd>" in page


def test_pool_template_user_group_event_and_job_pages_link_their_related_objects(admin_browser, inventory):
    i = inventory
    pool = admin_browser.get(f"/admin/pools/{i.pool}").text
    assert {f"/admin/desktops/{i.desktop}", f"/admin/desktops/{i.other_desktop}", f"/admin/groups/{i.group}",
            f"/admin/templates/{i.template}"} <= links(pool)

    template = admin_browser.get(f"/admin/templates/{i.template}").text
    assert 'id="version-1"' in template and 'id="version-2"' in template and "april patches" in template
    assert {f"/admin/pools/{i.pool}", f"/admin/desktops/{i.desktop}"} <= links(template)
    assert "Pools: template = &#34;Win 11 base&#34;" in template  # a name with spaces, quoted in the search

    user = admin_browser.get(f"/admin/users/{i.carol}").text
    assert {f"/admin/desktops/{i.desktop}", f"/admin/groups/{i.group}", f"/admin/groups/{i.parent_group}",
            f"/admin/pools/{i.pool}"} <= links(user)
    assert "HelpDesk <span class=\"muted\">through a group</span>" in user and "entitled through finance-staff" in user

    group = admin_browser.get(f"/admin/groups/{i.group}").text
    assert {f"/admin/users/{i.carol}", f"/admin/groups/{i.parent_group}", f"/admin/pools/{i.pool}"} <= links(group)
    assert "object-tab-events" not in group  # events name no group

    event = admin_browser.get(f"/admin/events/{i.event}").text
    assert {f"/admin/desktops/{i.desktop}", f"/admin/hosts/{i.host}", f"/admin/users/{i.carol}",
            f"/admin/jobs/{i.job}"} <= links(event)

    job = admin_browser.get(f"/admin/jobs/{i.job}").text
    assert f"/admin/desktops/{i.desktop}" in links(job) and 'value="40.0"' in job and "2 of 5" in job
    jobs = admin_browser.get("/admin/jobs", params={"state": "running"}).text
    assert f"/admin/jobs/{i.job}" in links(jobs) and 'data-total="1"' in jobs
    assert 'data-total="0"' in admin_browser.get("/admin/jobs", params={"state": "failed"}).text


def _event_tab(page: str) -> str:
    return re.search(r'id="object-panel-events".*?</div>\s*\n\s*</article>', page, re.S).group(0)


def test_the_events_tab_lists_that_objects_events_only_newest_first_and_paged(admin_browser, client, inventory):
    i = inventory
    with db.session_scope() as s:
        for n in range(30):
            emit(s, "desktop.updated", f"note {n:02d} on fin-01", desktop_id=i.desktop)
    response = admin_browser.get(f"/admin/desktops/{i.desktop}", params={"tab": "events"})
    tab = _event_tab(response.text)
    assert re.search(r'id="object-panel-overview" role="tabpanel"[^>]* hidden>', response.text)
    assert "fin-02 started" not in tab and "note 29 on fin-01" in tab
    api = client.get("/api/v1/events", params={"desktop_id": i.desktop, "per_page": 25}).json()
    assert re.findall(r'data-event-id="(\d+)"', tab) == [str(e["id"]) for e in api["items"]]
    assert "31 events" in tab
    older = _event_tab(admin_browser.get(f"/admin/desktops/{i.desktop}", params={"tab": "events", "page": 2}).text)
    assert "desktop fin-01 started" in older and "note 29" not in older and 'rel="prev"' in older

    host = _event_tab(admin_browser.get(f"/admin/hosts/{i.other_host}", params={"tab": "events"}).text)
    assert "fin-02 started" in host and "fin-01" not in host
    same_operation = _event_tab(admin_browser.get(f"/admin/events/{i.event}", params={"tab": "events"}).text)
    assert "template Win 11 base changed" in same_operation and "fin-02" not in same_operation


@pytest.mark.parametrize("path", ["desktops", "hosts", "pools", "templates", "users", "groups", "jobs"])
def test_an_unknown_id_is_a_404_page(admin_browser, path):
    response = admin_browser.get(f"/admin/{path}/00000000-0000-0000-0000-000000000000")
    assert response.status_code == 404 and "text/html" in response.headers["content-type"]
    assert "does not exist" in response.text


def test_an_unknown_event_is_a_404_page(admin_browser):
    for event_id in ("99999999", "not-a-number"):
        response = admin_browser.get(f"/admin/events/{event_id}")
        assert response.status_code == 404 and "text/html" in response.headers["content-type"]


def _log_in_as(anon_client, name: str, role: Role | None) -> None:
    with db.session_scope() as s:
        _user(s, name, password=f"{name}-password-1", role=role)
    anon_client.cookies.clear()
    assert form_login(anon_client, f"{name}@local", f"{name}-password-1").status_code == 303


def test_a_user_without_the_read_permission_gets_a_403_page(anon_client, inventory):
    i = inventory
    _log_in_as(anon_client, "plain", None)
    for path in (f"desktops/{i.desktop}", f"hosts/{i.host}", f"users/{i.carol}", f"jobs/{i.job}", "jobs"):
        response = anon_client.get(f"/admin/{path}")
        assert response.status_code == 403 and "text/html" in response.headers["content-type"], path
        assert "Not allowed" in response.text


def test_a_helpdesk_user_sees_the_pages_their_permissions_allow(anon_client, inventory):
    i = inventory
    _log_in_as(anon_client, "helper", Role.HELP_DESK)
    for path in (f"desktops/{i.desktop}", f"hosts/{i.host}", f"pools/{i.pool}", f"templates/{i.template}",
                 f"users/{i.carol}", f"groups/{i.group}", f"events/{i.event}", f"jobs/{i.job}", "jobs"):
        assert anon_client.get(f"/admin/{path}").status_code == 200, path
    desktop = anon_client.get(f"/admin/desktops/{i.desktop}").text
    assert ">Open console</button>" in desktop and "192.0.2.44" in desktop  # desktops:console, sessions:read


def test_the_screenshot_of_a_stopped_desktop_is_a_409_saying_so(client, inventory):
    response = client.get(f"/api/v1/desktops/{inventory.other_desktop}/screenshot")
    assert response.status_code == 409
    assert response.json()["detail"] == "desktop fin-02 is down: there is no screen to show until it runs"
    assert client.get("/api/v1/desktops/00000000-0000-0000-0000-000000000000/screenshot").status_code == 404


def test_the_screenshot_of_a_desktop_whose_host_is_in_maintenance_is_a_503(client, inventory):
    with db.session_scope() as s:
        s.get(Desktop, inventory.other_desktop).power_state = PowerState.UP
    response = client.get(f"/api/v1/desktops/{inventory.other_desktop}/screenshot")
    assert response.status_code == 503 and "vs-obj-b" in response.json()["detail"]


def test_the_screenshot_of_a_desktop_whose_node_does_not_answer_is_a_503(client, inventory):
    from manager.embedded_nodes import free_port

    with db.session_scope() as s:  # nothing listens there
        s.get(Host, inventory.host).agent_url = f"http://127.0.0.1:{free_port()}"
    response = client.get(f"/api/v1/desktops/{inventory.desktop}/screenshot")
    assert response.status_code == 503 and response.json()["error"] == "node_unreachable"
    assert "did not answer" in response.json()["detail"]


def test_the_screenshot_needs_the_console_permission(anon_client, inventory):
    _log_in_as(anon_client, "plain", None)
    response = anon_client.get(f"/api/v1/desktops/{inventory.desktop}/screenshot")
    assert response.status_code == 403


def test_the_jobs_list_pages_newest_first_keeping_its_filter(admin_browser):
    with db.session_scope() as s:
        s.add_all(Job(kind="storage.refresh", description=f"refresh {n:02d}", state=JobState.PENDING)
                  for n in range(55))
        s.add(Job(kind="storage.refresh", description="the failed one", state=JobState.FAILED))
    first = admin_browser.get("/admin/jobs", params={"state": "pending"}).text
    assert 'data-total="55"' in first and "the failed one" not in first
    assert 'value="pending" selected' in first
    assert re.search(r'<a href="(/admin/jobs[^"]*)" rel="next"', first).group(1) == "/admin/jobs?state=pending&amp;page=2"
    second = admin_browser.get("/admin/jobs", params={"state": "pending", "page": 2}).text
    assert len(re.findall(r'<tr data-id=', second)) == 5 and 'rel="prev"' in second
    assert admin_browser.get("/admin/jobs", params={"state": "sleeping"}).status_code == 422
