"""The browser harness itself: its guard catches a request leaving 127.0.0.1, lets local ones through, and
logged_in() gives the page a session with the role asked for."""
from __future__ import annotations

import json

from playwright.sync_api import expect


def test_the_guard_aborts_and_records_a_request_beyond_localhost(page, offsite_guard, vdi_server):
    page.set_content('<script src="http://example.com/x.js"></script><p>offline</p>')
    assert offsite_guard.blocked == ["GET http://example.com/x.js"]
    offsite_guard.take()  # this test wanted it: do not fail on it

    page.goto("/api/v1/health")  # the manager itself passes
    expect(page.locator("body")).to_contain_text('"status":"ok"')
    assert offsite_guard.blocked == []


def test_logged_in_holds_a_session_of_the_role_asked_for(logged_in):
    page = logged_in("HelpDesk")
    page.goto("/api/v1/auth/me")
    me = json.loads(page.locator("body").inner_text())
    assert me["username"] == "e2e-helpdesk"
    assert "HelpDesk" in me["roles"] and "SuperUser" not in me["roles"]
