"""A browser session (the vdi_session cookie) changes nothing without its CSRF token; bearer tokens need none."""
from __future__ import annotations

API = "/api/v1"


def _browser_login(anon_client) -> str:
    response = anon_client.post(f"{API}/auth/login",
                                json={"username": "admin@local", "password": "admin-test-password"})
    assert response.status_code == 200, response.text
    assert anon_client.cookies.get("vdi_session")
    return response.json()["csrf_token"]


def test_cookie_session_needs_the_csrf_token_to_change_anything(anon_client, admin_token):
    csrf = _browser_login(anon_client)
    body = {"name": "csrf-tag"}
    refused = anon_client.post(f"{API}/tags", json=body)
    assert refused.status_code == 403 and "CSRF" in refused.json()["detail"]
    forged = anon_client.post(f"{API}/tags", json=body, headers={"X-CSRF-Token": "0" * 40})
    assert forged.status_code == 403
    assert anon_client.get(f"{API}/tags").status_code == 200  # reading needs no token
    created = anon_client.post(f"{API}/tags", json=body, headers={"X-CSRF-Token": csrf})
    assert created.status_code == 201, created.text


def test_bearer_tokens_need_no_csrf_token(client):
    assert client.post(f"{API}/tags", json={"name": "bearer-tag"}).status_code == 201


def test_logout_with_the_cookie_needs_the_token_and_ends_the_session(anon_client, admin_token):
    csrf = _browser_login(anon_client)
    assert anon_client.post(f"{API}/auth/logout").status_code == 403
    assert anon_client.get(f"{API}/auth/me").status_code == 200
    assert anon_client.post(f"{API}/auth/logout", headers={"X-CSRF-Token": csrf}).status_code == 204
    anon_client.cookies.clear()
    assert anon_client.get(f"{API}/auth/me").status_code == 401
