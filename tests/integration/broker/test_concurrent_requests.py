"""The same change asked many times at once (issue 22 item 7), against the manager as a real uvicorn server on
real Postgres with node agents on libvirt test-driver hosts: exactly one request wins, every other gets a
clean 409 or 404 (never a 5xx), and the change happens, and is told as an event, once."""
from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from threading import Barrier

import httpx
import pytest
from sqlalchemy import func, select, text

from tests.integration.broker.conftest import API, api_server, bearer, wait_for_jobs, work_dir  # noqa: F401

CONCURRENT = 20
WAIT_S = 60.0  # how long a step may take before the test gives up (a hang is a failure, not a measurement)


@pytest.fixture
def admin(clean_db) -> dict[str, str]:
    from manager import db
    from manager.auth import issue_token
    from manager.bootstrap import ensure_admin

    with db.session_scope() as session:
        user, _ = ensure_admin(session, password="admin-test-password")
        return bearer(issue_token(session, user, name="concurrency tests"))


def all_at_once(url: str, method: str, headers: dict[str, str], json: dict | None = None) -> list[httpx.Response]:
    """CONCURRENT identical requests, each on its own connection, released together."""
    start = Barrier(CONCURRENT)

    def one(_: int) -> httpx.Response:
        with httpx.Client(timeout=120) as http:
            start.wait()
            return http.request(method, url, headers=headers, json=json)

    with ThreadPoolExecutor(CONCURRENT) as pool:
        return list(pool.map(one, range(CONCURRENT)))


def statuses(responses: list[httpx.Response]) -> list[int]:
    return sorted(r.status_code for r in responses)


def assert_one_winner(responses: list[httpx.Response], win: int, lose: set[int]) -> None:
    codes = statuses(responses)
    assert codes.count(win) == 1, [(r.status_code, r.text[:200]) for r in responses]
    assert set(codes) - {win} <= lose, [(r.status_code, r.text[:200]) for r in responses if r.status_code != win]
    for r in responses:
        assert "error" in r.json() or r.status_code == win, r.text


def events(code: str) -> int:
    from manager import db
    from manager.models import Event

    with db.session_scope() as s:
        return s.scalar(select(func.count()).select_from(Event).where(Event.code == code))


def one_desktop(world) -> str:
    from manager import db
    from manager.models import Desktop

    world.hosts(1)
    pool_id = world.pool(1)
    with db.session_scope() as s:
        return s.scalar(select(Desktop.id).where(Desktop.pool_id == pool_id))


def test_concurrent_deprovisions_remove_the_desktop_once(world, api_server, admin):  # noqa: F811
    desktop_id = one_desktop(world)
    responses = all_at_once(f"{api_server.url}{API}/desktops/{desktop_id}/deprovision", "POST", admin)
    assert_one_winner(responses, 202, {404, 409})
    wait_for_jobs(120)
    assert events("desktop.deprovisioned") == 1
    from manager import db
    from manager.models import Desktop

    with db.session_scope() as s:
        assert s.get(Desktop, desktop_id) is None


# A reset or a re-image ends (its job is quick on these hosts), after which the next request may rightly win again:
# what must hold is that no two overlap (a claim is a compare-and-swap), that every win is done once, and no 5xx.
@pytest.mark.parametrize("action, event", [("reset", "desktop.reset"), ("reimage", "desktop.reimaged")])
def test_concurrent_disk_actions_never_overlap(world, api_server, admin, action, event):  # noqa: F811
    desktop_id = one_desktop(world)
    responses = all_at_once(f"{api_server.url}{API}/desktops/{desktop_id}/{action}", "POST", admin, json={})
    codes = statuses(responses)
    assert set(codes) <= {202, 409} and 202 in codes, [(r.status_code, r.text[:200]) for r in responses]
    wait_for_jobs(120)
    assert events(event) == codes.count(202)


def test_removal_racing_resets_and_reimages(world, api_server, admin):  # noqa: F811
    """Deprovisions, resets and re-images of one desktop at once: whoever loses gets a 409 or, once the desktop
    is gone, a 404 (a re-image that read the desktop before its removal used to refresh the deleted row: 500)."""
    desktop_id = one_desktop(world)
    start = Barrier(CONCURRENT)
    actions = ["deprovision", "reset", "reimage", "reimage"] * (CONCURRENT // 4)

    def one(action: str) -> tuple[str, httpx.Response]:
        with httpx.Client(timeout=120) as http:
            start.wait()
            return action, http.post(f"{api_server.url}{API}/desktops/{desktop_id}/{action}", headers=admin,
                                     json={})

    with ThreadPoolExecutor(CONCURRENT) as pool:
        results = list(pool.map(one, actions))
    assert all(r.status_code in (202, 404, 409) for _a, r in results), \
        [(a, r.status_code, r.text[:200]) for a, r in results]
    wait_for_jobs(120)
    removed = sum(1 for a, r in results if a == "deprovision" and r.status_code == 202)
    assert removed <= 1 and events("desktop.deprovisioned") == removed


def wait_for_a_blocked_update(table: str) -> None:
    """Until some backend's UPDATE of `table` waits for a row lock (ours)."""
    from manager import db

    deadline = time.monotonic() + WAIT_S
    while True:
        with db.session_scope() as s:
            waiting = s.scalar(text("SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                                    "AND query ILIKE :q"), {"q": f"UPDATE {table} %"})
        if waiting:
            return
        assert time.monotonic() < deadline, f"no UPDATE of {table} waited for our lock"
        time.sleep(0.05)


def test_a_reimage_that_loses_to_a_removal_is_a_404(world, api_server, admin):  # noqa: F811
    """The removal claims the desktop and deletes its rows while a re-image, which read the desktop before,
    waits to claim it: the re-image finds no desktop (it used to refresh the deleted row: a 500)."""
    from core.enums import TaskState
    from manager import db
    from manager.provisioning import service

    desktop_id = one_desktop(world)
    with ThreadPoolExecutor(1) as pool:
        with db.session_scope() as s:
            service.claim_for_disk_action(s, desktop_id, "deprovision")  # holds the row until we commit
            reimage = pool.submit(httpx.post, f"{api_server.url}{API}/desktops/{desktop_id}/reimage",
                                  headers=admin, json={}, timeout=120)
            wait_for_a_blocked_update("desktops")
            work = service.disk_work(s, desktop_id, TaskState.DELETING)
            assert service.finish_removal(s, work)
        response = reimage.result()
    service.power_off_quietly(work)
    service.remove_everywhere(work)
    assert response.status_code == 404, response.text
    assert response.json()["error"] == "not_found"


@pytest.mark.parametrize("path, body", [("tags", {"name": "doomed"}), ("clusters", {"name": "doomed"}),
                                        ("bookmarks", {"name": "doomed", "query": "Vms: name = x"})])
def test_concurrent_deletes_delete_once(api_server, admin, path, body):  # noqa: F811
    created = httpx.post(f"{api_server.url}{API}/{path}", json=body, headers=admin)
    assert created.status_code == 201, created.text
    kind = {"tags": "tag", "clusters": "cluster", "bookmarks": "bookmark"}[path]
    responses = all_at_once(f"{api_server.url}{API}/{path}/{created.json()['id']}", "DELETE", admin)
    codes = statuses(responses)
    assert codes.count(204) == 1 and set(codes) <= {204, 404}, [(r.status_code, r.text[:200]) for r in responses]
    assert events(f"{kind}.deleted") == 1
