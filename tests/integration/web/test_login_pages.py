"""The login form, logout and what a page does for someone who is not logged in or not allowed."""
from __future__ import annotations

from tests.integration.web.conftest import form_login, page_csrf, session_csrf


def test_pages_send_strangers_to_the_login_form_and_back(anon_client, admin_token):
    response = anon_client.get("/admin?q=Vms%3A", follow_redirects=False)
    assert response.status_code == 303
    assert response.headers["location"] == "/admin/login?next=%2Fadmin%3Fq%3DVms%253A"
    form = anon_client.get(response.headers["location"])
    assert form.status_code == 200
    assert '<label for="username">Username</label>' in form.text and 'value="/admin?q=Vms%3A"' in form.text
    done = form_login(anon_client, "admin@local", "admin-test-password", "/admin?q=Vms%3A")
    assert done.status_code == 303 and done.headers["location"] == "/admin?q=Vms%3A"
    assert anon_client.get("/admin?q=Vms%3A").status_code == 200


def test_a_wrong_password_is_said_on_the_form_without_saying_which_part(anon_client, admin_token):
    response = form_login(anon_client, "admin@local", "not-the-password")
    assert response.status_code == 401
    assert 'role="alert"' in response.text and "admin@local" in response.text  # the name stays typed
    assert anon_client.cookies.get("vdi_session") is None


def test_login_never_redirects_off_site(anon_client, admin_token):
    for target in ("https://evil.example/", "//evil.example/x", "/\\evil.example"):
        response = form_login(anon_client, "admin@local", "admin-test-password", target)
        assert response.headers["location"] == "/admin", target


def test_pages_carry_the_sessions_csrf_token_and_logout_needs_it(admin_browser):
    html = admin_browser.get("/admin").text
    assert page_csrf(html) == session_csrf(admin_browser)
    refused = admin_browser.post("/admin/logout", data={"csrf_token": "forged"}, follow_redirects=False)
    assert refused.status_code == 403
    done = admin_browser.post("/admin/logout", data={"csrf_token": page_csrf(html)}, follow_redirects=False)
    assert done.status_code == 303 and done.headers["location"] == "/admin/login"
    assert admin_browser.get("/admin", follow_redirects=False).status_code == 303  # the session is gone


def test_a_user_without_console_rights_gets_a_page_saying_so(anon_client, admin_token, client):
    created = client.post("/api/v1/users", json={"username": "plain", "domain": "local", "password": "plain-password-1"})
    assert created.status_code == 201, created.text
    client.headers.pop("Authorization")
    client.cookies.clear()
    assert form_login(anon_client, "plain@local", "plain-password-1").status_code == 303
    response = anon_client.get("/admin")
    assert response.status_code == 403 and "text/html" in response.headers["content-type"]
    assert "not allowed to search read" in response.text
    assert '<a href="/">Back to your home page</a>' in response.text  # and home is the portal for them
    assert anon_client.get("/", follow_redirects=False).headers["location"] == "/portal"


def test_an_unknown_page_is_a_page(admin_browser):
    response = admin_browser.get("/admin/no-such-thing")
    assert response.status_code == 404 and "text/html" in response.headers["content-type"]
