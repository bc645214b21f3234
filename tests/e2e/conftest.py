"""Browser tests: Debian's chromium, driven by Playwright, against the real manager (`vdi demo` + `vdi serve` on
a Postgres database of their own, with node agents).

Fixtures:
    vdi_server    (package) tests.e2e.server.RunningManager: base_url, admin (Account), api(account) and
                  admin_api (httpx clients for /api/v1), create_user(name, role), account(role), database_url,
                  data_dir (its logs: data_dir/logs)
    chromium      (session) the path of Debian's chromium; fails (not skips) the tests when it is missing
    browser       (package) the chromium Browser (headless, no sandbox, no calls home; see browser.py)
    offsite_guard           the test's tests.e2e.browser.OffsiteGuard (what it blocked: .blocked)
    context                 a fresh BrowserContext (base_url = the manager, so page.goto("/docs") works)
    page                    a Page in that context, not logged in
    logged_in               logged_in(role="SuperUser") -> the same page, its context holding a session of an
                            account with that role (SuperUser, DesktopAdmin, HelpDesk, User)

Every test here is marked `browser` and `postgres`. A request that would leave 127.0.0.1 is aborted, and the
test fails naming it.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, BrowserContext, Page, expect, sync_playwright

from tests.e2e.browser import (ACTION_TIMEOUT_MS, ChromiumMissing, OffsiteGuard, chromium_executable, launch_chromium,
                              log_in, new_guarded_context)
from tests.e2e.server import RunningManager, running_manager
from tests.harness.postgres import PostgresUnavailable, fresh_database

HERE = Path(__file__).parent
GUARD = pytest.StashKey[OffsiteGuard]()
# expect() waits up to this long for its condition, like actions do (its own default is 5 s: too short for ReDoc
# parsing the whole API on two busy cores). A wait, not a speed assertion.
expect.set_options(timeout=ACTION_TIMEOUT_MS)


def pytest_collection_modifyitems(items):
    for item in items:
        if HERE in item.path.parents:
            item.add_marker(pytest.mark.browser)
            item.add_marker(pytest.mark.postgres)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item):
    """Fail the test itself (not only its teardown) when its pages tried to leave 127.0.0.1."""
    result = yield
    guard = item.stash.get(GUARD, None)
    if guard is not None:
        blocked = guard.take()
        assert not blocked, "requests beyond 127.0.0.1 (aborted): " + ", ".join(blocked)
    return result


# Package scope: one manager and one browser for all of tests/e2e, stopped once its last test has run rather than
# at the end of a `make test` session (they would otherwise run on beside the integration tests).
@pytest.fixture(scope="package")
def vdi_server() -> Iterator[RunningManager]:
    try:
        with fresh_database("vdi_e2e") as url, running_manager(url) as server:
            yield server
    except PostgresUnavailable as exc:  # raised before the yield only
        pytest.fail(str(exc))


@pytest.fixture(scope="session")
def chromium() -> Path:
    """Debian's chromium, checked before the manager starts so that a missing one fails at once."""
    try:
        return chromium_executable()
    except ChromiumMissing as exc:
        pytest.fail(str(exc))  # not a skip: CI installs chromium, a missing one is a broken setup


@pytest.fixture(scope="package")
def browser(chromium) -> Iterator[Browser]:
    with sync_playwright() as playwright:
        launched = launch_chromium(playwright)
        yield launched
        launched.close()


@pytest.fixture
def offsite_guard(request) -> Iterator[OffsiteGuard]:
    guard = OffsiteGuard()
    request.node.stash[GUARD] = guard
    yield guard
    late = guard.take()  # after the test body: while its pages closed
    if late:
        pytest.fail("requests beyond 127.0.0.1 (aborted): " + ", ".join(late))


@pytest.fixture
def context(chromium, vdi_server, browser, offsite_guard) -> Iterator[BrowserContext]:
    # vdi_server before browser: the browser (and any event stream it holds) closes before the manager stops
    ctx = new_guarded_context(browser, offsite_guard, vdi_server.base_url)
    yield ctx
    ctx.close()


@pytest.fixture
def page(context) -> Page:
    return context.new_page()


@pytest.fixture
def logged_in(vdi_server, context, page) -> Callable[[str], Page]:
    def log_in_as(role: str = "SuperUser") -> Page:
        log_in(context, vdi_server.base_url, vdi_server.account(role))
        return page
    return log_in_as
