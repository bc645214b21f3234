"""The console's live parts in the browser: a new alert appears in the events drawer without a reload, the jobs tray
shows a running job's progress as it moves and Console.watchJob resolves with the finished job, and the dashboard's
figures follow the database without a reload. Events and jobs are written into the running manager's database, as
the manager's own workers would write them."""
from __future__ import annotations

import datetime as dt
import os
import re
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import expect
from sqlalchemy import update
from sqlalchemy.orm import Session

from core.enums import JobState, Severity
from event_manager.service import emit
from manager.db import make_engine
from manager.models import Desktop, Host, Job, utcnow

SCREENSHOTS = Path(os.environ.get("VDI_E2E_SCREENSHOTS", "/tmp"))


def _database_url(server) -> str:
    url = getattr(server, "database_url", None)
    if url:
        return url
    environ = Path(f"/proc/{server.process.pid}/environ").read_bytes().split(b"\0")  # what `vdi serve` was given
    return next(v.split(b"=", 1)[1].decode() for v in environ if v.startswith(b"VDI_DATABASE_URL="))


@pytest.fixture(scope="module")
def manager_db(vdi_server) -> Iterator[Session]:
    """A session on the running manager's database (commit to make a change visible to it)."""
    engine = make_engine(_database_url(vdi_server))
    with Session(engine) as session:
        yield session
    engine.dispose()


def _mark_page(page) -> None:
    page.evaluate("window.__no_reload = true")


def _not_reloaded(page) -> bool:
    return page.evaluate("window.__no_reload === true")


def test_a_new_alert_appears_in_the_drawer_without_a_reload(logged_in, manager_db):
    page = logged_in()
    page.goto("/admin")
    _mark_page(page)
    events_button = page.get_by_role("button", name="Events")
    expect(page.locator("#events-stream-state")).to_have_text("live")

    host_id = manager_db.scalar(Host.__table__.select().with_only_columns(Host.id).limit(1))
    message = f"host lost its storage {uuid.uuid4().hex[:8]}"
    emit(manager_db, "ha.fencing_skipped", message, severity=Severity.ALERT, host_id=host_id)
    manager_db.commit()

    expect(page.locator("#events-unread")).to_have_text(re.compile(r"^[1-9]\d*$"))  # the badge counts it, unread
    events_button.click()
    drawer = page.get_by_role("dialog", name="Events")
    expect(drawer).to_be_visible()
    alerts = drawer.get_by_role("list", name="Alerts")
    item = alerts.get_by_role("listitem").filter(has_text=message)
    expect(item).to_have_count(1)
    expect(item.get_by_role("link", name=message)).to_have_attribute("href", f"/admin/hosts/{host_id}")
    expect(item).to_contain_text("alert")
    expect(item.locator("time")).to_have_text(re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d$"))
    expect(page.locator("#events-unread")).to_have_text("")  # seen now that the Alerts tab is open

    # a normal event is in the Events tab only; the tabs work from the keyboard
    emit(manager_db, "demo.seeded", "an ordinary event", severity=Severity.NORMAL)
    manager_db.commit()
    drawer.get_by_role("tab", name="Alerts").press("ArrowRight")
    expect(drawer.get_by_role("tab", name="Events")).to_have_attribute("aria-selected", "true")
    expect(drawer.get_by_role("list", name="Latest events")).to_contain_text("an ordinary event")
    expect(page.locator("#alerts-list")).not_to_contain_text("an ordinary event")  # (its tab is hidden now)
    page.screenshot(path=str(SCREENSHOTS / "console-events-drawer.png"))
    page.keyboard.press("Escape")
    expect(drawer).to_be_hidden()
    assert _not_reloaded(page)


def test_the_jobs_tray_shows_a_running_jobs_progress(logged_in, manager_db):
    job = Job(kind="desktop.bulk", description="reboot 20 desktops", state=JobState.RUNNING, done=3, total=20,
              progress=15.0, started_at=utcnow() - dt.timedelta(seconds=30), created_by="admin@local")
    manager_db.add(job)
    manager_db.commit()
    page = logged_in()
    page.goto("/admin")
    _mark_page(page)
    jobs_button = page.get_by_role("button", name="Jobs")
    expect(page.locator("#jobs-running")).to_have_text(re.compile(r"^[1-9]\d*$"))
    jobs_button.click()
    tray = page.get_by_role("dialog", name="Jobs")
    item = tray.get_by_role("listitem").filter(has=page.get_by_role("link", name="reboot 20 desktops"))
    expect(item).to_have_count(1)
    expect(item.get_by_role("link", name="reboot 20 desktops")).to_have_attribute("href", f"/admin/jobs/{job.id}")
    progress = item.get_by_role("progressbar", name="Progress of reboot 20 desktops")
    expect(progress).to_have_attribute("max", "20")
    expect(item).to_contain_text("3/20")
    expect(item).to_contain_text(re.compile(r"ETA \d+ (s|min)"))
    assert progress.evaluate("node => node.value") == 3

    manager_db.execute(update(Job).where(Job.id == job.id).values(done=12, progress=60.0))
    manager_db.commit()
    expect(item).to_contain_text("12/20")  # polled while the tray is open, no reload
    assert progress.evaluate("node => node.value") == 12

    # another script started the job: watchJob follows it to the end and resolves with the final JobOut
    # (kept in a global: evaluate() would wait for the promise, which resolves only after the update below)
    page.evaluate("id => { Console.watchJob(id).then((job) => { window.__final_job = job; }); }", job.id)
    manager_db.execute(update(Job).where(Job.id == job.id).values(done=20, progress=100.0, state=JobState.SUCCEEDED,
                                                                   finished_at=utcnow()))
    manager_db.commit()
    page.wait_for_function("window.__final_job !== undefined")
    final = page.evaluate("window.__final_job")
    assert (final["id"], final["state"], final["done"], final["total"]) == (job.id, "succeeded", 20, 20)
    expect(item).to_contain_text("succeeded")
    expect(page.locator("#jobs-running")).to_have_text("")
    assert _not_reloaded(page)


def test_the_dashboard_follows_the_database_without_a_reload(logged_in, manager_db, vdi_server):
    page = logged_in()
    page.goto("/admin/dashboard")
    _mark_page(page)
    total = page.locator('.tiles [data-f="desktops.total"]')
    api = vdi_server.admin_api.get("/dashboard").json()
    expect(total).to_have_text(f"{api['desktops']['total']:,}")
    page.screenshot(path=str(SCREENSHOTS / "console-dashboard.png"), full_page=True)

    manager_db.add(Desktop(name=f"dash-e2e-{uuid.uuid4().hex[:6]}"))
    manager_db.commit()
    expect(total).to_have_text(f"{api['desktops']['total'] + 1:,}", timeout=20_000)  # the next poll (5 s)
    assert _not_reloaded(page)
