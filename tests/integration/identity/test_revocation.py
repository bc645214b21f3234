"""Disabling a user in AD (ldap3 modify userAccountControl), then the scheduled incremental sync job: the
user's tokens and browser sessions stop working at once, their desktop sessions are ended, events say so,
and the next login is refused with 403."""
from __future__ import annotations

from ldap3 import MODIFY_REPLACE
from sqlalchemy import func, select

from core.enums import SessionState
from manager import db
from manager.models import ApiToken, Desktop, DesktopSession, Event, User, utcnow
from tests.integration.identity.conftest import user_dn
from tests.integration.identity.test_login import API, login, wait_for_job

DISABLED = 514  # NORMAL_ACCOUNT | ACCOUNTDISABLE


def test_disabling_in_ad_then_incremental_sync_revokes_everything(ad_reset, ad_env, client, anon_client, ad_admin):
    ad = ad_reset
    first = client.post(f"{API}/directory/sync", json={"full": True})
    assert first.status_code == 202, first.text
    assert wait_for_job(client, first.json()["id"])["result"]["mode"] == "full"

    browser = login(anon_client, "user011", ad["AD_USER_PASSWORD"]).json()
    bearer = {"Authorization": f"Bearer {browser['token']}"}
    script_token = anon_client.post(f"{API}/auth/tokens", json={"name": "script"}, headers=bearer).json()["token"]
    bystander = login(anon_client, "user013", ad["AD_USER_PASSWORD"]).json()
    with db.session_scope() as session:
        user_id, other_id = browser["user_id"], bystander["user_id"]
        desks = [Desktop(name=f"desk-{i}") for i in range(3)]
        session.add_all(desks)
        session.flush()
        session.add_all([
            DesktopSession(desktop_id=desks[0].id, user_id=user_id, state=SessionState.CONNECTED,
                           connected_at=utcnow()),
            DesktopSession(desktop_id=desks[1].id, user_id=user_id, state=SessionState.DISCONNECTED),
            DesktopSession(desktop_id=desks[2].id, user_id=other_id, state=SessionState.CONNECTED),
        ])
    for token in (browser["token"], script_token):
        assert anon_client.get(f"{API}/auth/me", headers={"Authorization": f"Bearer {token}"}).status_code == 200

    ad_admin.modify(user_dn(ad, "user011"), {"userAccountControl": [(MODIFY_REPLACE, [DISABLED])]})
    job = client.post(f"{API}/directory/sync", json={})  # what the scheduler queues: incremental
    assert job.status_code == 202
    result = wait_for_job(client, job.json()["id"])["result"]
    assert result["mode"] == "incremental"
    assert result["users"]["disabled"]["names"] == ["user011"]
    assert result["revoked"] == {"users": 1, "tokens": 2, "sessions": 2}

    for token in (browser["token"], script_token):
        assert anon_client.get(f"{API}/auth/me", headers={"Authorization": f"Bearer {token}"}).status_code == 401
    with db.session_scope() as session:
        assert not session.get(User, user_id).enabled
        assert session.scalar(select(func.count()).select_from(ApiToken).where(ApiToken.user_id == user_id)) == 0
        mine = list(session.scalars(select(DesktopSession).where(DesktopSession.user_id == user_id)))
        assert {s.state for s in mine} == {SessionState.ENDED} and all(s.ended_at for s in mine)
        other = session.scalar(select(DesktopSession).where(DesktopSession.user_id == other_id))
        assert other.state == SessionState.CONNECTED  # nobody else is touched
        events = list(session.scalars(select(Event).where(Event.user_id == user_id)))
        ended = [e for e in events if e.code == "session.ended"]
        assert sorted(e.desktop_id for e in ended) == sorted(s.desktop_id for s in mine)
        assert [e.code for e in events if e.code == "user.access_revoked"] == ["user.access_revoked"]
    assert anon_client.get(f"{API}/auth/me", headers={"Authorization": f"Bearer {bystander['token']}"}) \
        .status_code == 200

    refused = login(anon_client, "user011", ad["AD_USER_PASSWORD"])
    assert refused.status_code == 403 and refused.json()["detail"] == "this account is disabled"
    explained = client.get(f"{API}/users/{user_id}/access").json()
    assert explained["active"] is False and explained["blocked_by"] == ["the account is disabled in the directory"]


def test_sync_job_failure_is_recorded(ad, ad_env, client, monkeypatch):
    from manager.identity.settings import get_directory_settings

    monkeypatch.setenv("VDI_AD_BIND_PASSWORD", "not-the-password")
    get_directory_settings.cache_clear()
    job = client.post(f"{API}/directory/sync", json={"full": True}).json()
    import time

    deadline = time.monotonic() + 60
    while (state := client.get(f"{API}/jobs/{job['id']}").json())["state"] not in ("failed", "succeeded"):
        assert time.monotonic() < deadline
        time.sleep(0.1)
    assert state["state"] == "failed" and "VDI_AD_BIND_PASSWORD" in state["error"]
    status = client.get(f"{API}/directory/status").json()
    assert status["configured"] and "VDI_AD_BIND_PASSWORD" in status["last_error"]
    assert "not-the-password" not in str(status)
