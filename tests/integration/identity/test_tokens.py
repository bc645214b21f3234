"""Every token's life is bounded (issue 22, item 10): POST /auth/tokens never makes an immortal token, the configured
limits also end older tokens, a password change revokes the user's other tokens, and a token minted by a session
without the password again dies with that session's logout."""
from __future__ import annotations

import datetime as dt

import pytest
from sqlalchemy import select

from manager import db
from manager.auth import token_digest
from manager.config import get_settings
from manager.models import ApiToken, utcnow

API = "/api/v1"
PASSWORD = "admin-test-password"


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def works(client, token: str) -> bool:
    status = client.get(f"{API}/auth/me", headers=bearer(token)).status_code
    assert status in (200, 401), status
    return status == 200


def login(client, password: str = PASSWORD) -> str:
    reply = client.post(f"{API}/auth/login", json={"username": "admin", "password": password})
    assert reply.status_code == 200, reply.text
    client.cookies.clear()  # each test credential travels as a bearer token only
    return reply.json()["token"]


def test_a_token_without_a_lifetime_expires_at_the_configured_maximum(client):
    made = client.post(f"{API}/auth/tokens", json={})
    assert made.status_code == 201, made.text
    expires = dt.datetime.fromisoformat(made.json()["expires_at"])
    expected = utcnow() + dt.timedelta(days=90)
    assert abs((expires - expected).total_seconds()) < 3600
    too_long = client.post(f"{API}/auth/tokens", json={"lifetime_days": 365})
    assert too_long.status_code == 422 and "VDI_API_TOKEN_MAX_DAYS" in too_long.json()["detail"]


def test_the_configured_limits_end_older_tokens_too(client, anon_client, monkeypatch, admin_token):
    token = client.post(f"{API}/auth/tokens", json={"lifetime_days": 30}).json()["token"]
    with db.session_scope() as session:  # a token from before the limits: no expiry, made 100 days ago
        row = session.scalar(select(ApiToken).where(ApiToken.token_hash == token_digest(token)))
        row.expires_at, row.created_at = None, utcnow() - dt.timedelta(days=100)
    assert not works(anon_client, token)

    fresh = client.post(f"{API}/auth/tokens", json={"lifetime_days": 30}).json()["token"]
    with db.session_scope() as session:
        row = session.scalar(select(ApiToken).where(ApiToken.token_hash == token_digest(fresh)))
        row.created_at = utcnow() - dt.timedelta(days=2)
    assert works(anon_client, fresh)
    monkeypatch.setenv("VDI_API_TOKEN_MAX_DAYS", "1")  # the operator lowers the limit: it applies at once
    get_settings.cache_clear()
    try:
        assert not works(anon_client, fresh)
        assert works(anon_client, admin_token)  # made just now
    finally:
        monkeypatch.delenv("VDI_API_TOKEN_MAX_DAYS")
        get_settings.cache_clear()


def test_a_password_change_revokes_the_other_tokens(client, anon_client, admin_token):
    me = client.get(f"{API}/auth/me").json()["user_id"]
    changer, other_session = login(anon_client), login(anon_client)
    script = anon_client.post(f"{API}/auth/tokens", json={"password": PASSWORD}, headers=bearer(other_session))
    assert script.status_code == 201, script.text
    minted_by_changer = anon_client.post(f"{API}/auth/tokens", json={}, headers=bearer(changer)).json()["token"]
    changed = anon_client.patch(f"{API}/users/{me}", json={"password": "a-new-password-1"}, headers=bearer(changer))
    assert changed.status_code == 200, changed.text
    for token in (other_session, script.json()["token"], admin_token):
        assert not works(anon_client, token)
    assert works(anon_client, changer) and works(anon_client, minted_by_changer)  # the session making the change

    # an administrator resetting someone else's password revokes all of that user's tokens
    user = anon_client.post(f"{API}/users", json={"username": "bob", "password": "bob-password-1"},
                            headers=bearer(changer)).json()
    bob = anon_client.post(f"{API}/auth/login", json={"username": "bob", "password": "bob-password-1"}).json()["token"]
    anon_client.cookies.clear()
    assert works(anon_client, bob)
    reset = anon_client.patch(f"{API}/users/{user['id']}", json={"password": "bob-password-2"}, headers=bearer(changer))
    assert reset.status_code == 200
    assert not works(anon_client, bob)


def test_a_token_minted_by_a_session_dies_with_its_logout_unless_the_password_was_given(client, anon_client):
    session_token = login(anon_client)
    bound = anon_client.post(f"{API}/auth/tokens", json={"name": "bound"}, headers=bearer(session_token))
    assert bound.status_code == 201 and bound.json()["bound_to"]
    assert dt.datetime.fromisoformat(bound.json()["expires_at"]) <= utcnow() + dt.timedelta(hours=12)
    wrong = anon_client.post(f"{API}/auth/tokens", json={"password": "not it"}, headers=bearer(session_token))
    assert wrong.status_code == 403 and "password" in wrong.json()["detail"]
    own = anon_client.post(f"{API}/auth/tokens", json={"name": "own", "password": PASSWORD, "lifetime_days": 30},
                           headers=bearer(session_token))
    assert own.status_code == 201 and own.json()["bound_to"] is None
    assert works(anon_client, bound.json()["token"]) and works(anon_client, own.json()["token"])

    assert anon_client.post(f"{API}/auth/logout", headers=bearer(session_token)).status_code == 204
    assert not works(anon_client, session_token)
    assert not works(anon_client, bound.json()["token"])  # revoked with the session it came from
    assert works(anon_client, own.json()["token"])  # confirmed by the password: the user's own


@pytest.mark.parametrize("hours", [1])
def test_a_session_lives_the_configured_hours(anon_client, admin_token, monkeypatch, hours):
    session_token = login(anon_client)
    with db.session_scope() as session:
        row = session.scalar(select(ApiToken).where(ApiToken.token_hash == token_digest(session_token)))
        assert row.kind == "session"
        row.created_at = utcnow() - dt.timedelta(hours=hours, minutes=1)
    assert works(anon_client, session_token)  # 12 h by default
    monkeypatch.setenv("VDI_SESSION_HOURS", str(hours))
    get_settings.cache_clear()
    try:
        assert not works(anon_client, session_token)
    finally:
        monkeypatch.delenv("VDI_SESSION_HOURS")
        get_settings.cache_clear()
