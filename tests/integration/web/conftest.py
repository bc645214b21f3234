"""Pages as a browser gets them: a TestClient logged in through the login form, so it holds the session cookie."""
from __future__ import annotations

import re

import pytest

from manager.auth import csrf_token


def form_login(client, username: str, password: str, next_path: str = "/admin"):
    return client.post("/admin/login", data={"username": username, "password": password, "next": next_path},
                       follow_redirects=False)


@pytest.fixture
def admin_browser(anon_client, admin_token):
    """The admin logged in through the form (admin_token's fixture created admin@local)."""
    response = form_login(anon_client, "admin@local", "admin-test-password")
    assert response.status_code == 303, response.text
    return anon_client


def page_csrf(html: str) -> str:
    found = re.search(r'<meta name="csrf-token" content="([0-9a-f]+)">', html)
    assert found, "the page carries no CSRF token"
    return found.group(1)


def session_csrf(client) -> str:
    return csrf_token(client.cookies.get("vdi_session"))
