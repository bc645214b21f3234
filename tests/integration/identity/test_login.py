"""POST /api/v1/auth/login with Active Directory accounts (LDAP bind as the user, against the Samba DC) and the
local bootstrap admin: name forms, 401 without leaks, 403 for disabled accounts, LDAP injection, brute-force
throttling, a directory that does not answer."""
from __future__ import annotations

import datetime as dt

import pytest
from sqlalchemy import func, select

from manager import db
from manager.models import LoginAttempt, User, utcnow
from tests.integration.identity.conftest import REALM

API = "/api/v1"
LOGIN = f"{API}/auth/login"


def login(client, username: str, password: str):
    return client.post(LOGIN, json={"username": username, "password": password})


@pytest.fixture
def lenient_address_limit(monkeypatch):
    """Many failures from the test client's one address, without tripping the per-address limit."""
    from manager.identity.settings import get_login_settings

    monkeypatch.setenv("VDI_LOGIN_MAX_FAILURES_PER_ADDRESS", "1000")
    get_login_settings.cache_clear()
    yield
    get_login_settings.cache_clear()


def test_ad_user_logs_in_with_every_name_form(ad, ad_env, client, anon_client):
    password = ad["AD_USER_PASSWORD"]
    user_ids = set()
    for name in (f"user011@{REALM}", "CORP\\user011", "corp\\USER011", "user011", "user011@CORP"):
        response = login(anon_client, name, password)
        assert response.status_code == 200, (name, response.text)
        body = response.json()
        assert (body["username"], body["domain"]) == ("user011", "CORP")
        user_ids.add(body["user_id"])
    assert len(user_ids) == 1  # one identity, however the name was written

    with db.session_scope() as session:
        row = session.get(User, user_ids.pop())
        assert row.source == "ad" and row.object_guid and row.upn == f"user011@{REALM}"
        assert row.department == "Engineering" and not row.password_hash

    token = login(anon_client, "user011", password).json()["token"]
    me = anon_client.get(f"{API}/auth/me", headers={"Authorization": f"Bearer {token}"})
    assert me.status_code == 200 and me.json()["username"] == "user011"

    # the local bootstrap admin keeps working beside the directory
    for name in ("admin", "admin@local"):
        assert login(anon_client, name, "admin-test-password").status_code == 200


def test_roles_come_from_synced_groups_after_login(ad, ad_env, client, anon_client):
    job = client.post(f"{API}/directory/sync", json={"full": True})
    assert job.status_code == 202, job.text
    wait_for_job(client, job.json()["id"])
    token = login(anon_client, "user002", ad["AD_USER_PASSWORD"]).json()["token"]
    me = anon_client.get(f"{API}/auth/me", headers={"Authorization": f"Bearer {token}"}).json()
    assert "SuperUser" in me["roles"]  # vdi-admins -> SuperUser


def test_wrong_password_and_unknown_user_get_the_same_401(ad, ad_env, client, anon_client):
    attempts = [("user011", "wrong password"), (f"user011@{REALM}", "wrong password"),
                ("nobody-at-all", "wrong password"), ("CORP\\nobody", "x"), ("user010", "wrong password"),
                ("admin", "wrong password"), ("ghost@local", "x"), ("user011@other.example.org", ad["AD_USER_PASSWORD"])]
    bodies = []
    for name, password in attempts:
        response = login(anon_client, name, password)
        assert response.status_code == 401, (name, response.text)
        bodies.append(response.json())
    assert all(b == bodies[0] for b in bodies), bodies
    assert bodies[0] == {"error": "not_authenticated", "detail": "wrong user name or password"}


def test_disabled_account_is_403_but_only_with_the_right_password(ad, ad_env, anon_client):
    right = login(anon_client, "user010", ad["AD_USER_PASSWORD"])  # every 10th seeded user is disabled
    assert right.status_code == 403, right.text
    assert right.json()["detail"] == "this account is disabled"
    wrong = login(anon_client, "user010", "not the password")
    assert wrong.status_code == 401  # a guess learns nothing about the account


@pytest.mark.parametrize("name", [
    "*", "user01*", "svc-vd*", "user011*", "*)(sAMAccountName=*", "user011)(|(sAMAccountName=*",
    "*)(|(objectClass=*", "\\00", "user011\\00", "CORP\\*", "*@corp.example.com",
    "user011)(", "(", ")", "user0*1", "*)(userAccountControl:1.2.840.113556.1.4.803:=2",
])
def test_ldap_injection_in_the_user_name_is_inert(ad, ad_env, anon_client, lenient_address_limit, name):
    # Every seeded account has the same password, so a wildcard that reached the filter unescaped would find
    # exactly one account for names like "svc-vd*" or "user011*" and log in as it.
    response = login(anon_client, name, ad["AD_USER_PASSWORD"])
    assert response.status_code == 401, (name, response.text)
    assert response.json()["detail"] == "wrong user name or password"


def test_a_nul_character_in_the_user_name_is_refused_before_the_directory(ad, ad_env, anon_client):
    # No account name holds a NUL: the request itself is malformed (422), and it never reaches the LDAP filter.
    response = login(anon_client, "user011\x00", ad["AD_USER_PASSWORD"])
    assert response.status_code == 422, response.text


def test_injection_probe_is_a_real_probe(ad, ad_env, anon_client):
    """The same password with the plain names does log in, so the 401s above come from escaping."""
    for name in ("svc-vdi", "user011"):
        assert login(anon_client, name, ad["AD_USER_PASSWORD"]).status_code == 200


def test_five_failures_lock_the_login_and_success_resets(ad, ad_env, anon_client):
    password = ad["AD_USER_PASSWORD"]
    for _ in range(4):
        assert login(anon_client, "user012", "wrong").status_code == 401
    assert login(anon_client, "user012", password).status_code == 200  # clears the four failures
    for _ in range(5):
        assert login(anon_client, "user012", "wrong").status_code == 401
    locked = login(anon_client, "user012", password)  # even the right password waits
    assert locked.status_code == 429, locked.text
    body = locked.json()
    assert body["error"] == "too_many_requests" and 0 < body["retry_after"] <= 300
    assert f"{body['retry_after']} seconds" in body["detail"]
    # the lock names the login (any spelling), not other accounts from the same address
    assert login(anon_client, "USER012", password).status_code == 429
    assert login(anon_client, "user014", password).status_code == 200

    # failures older than the window no longer count
    with db.session_scope() as session:
        for attempt in session.scalars(select(LoginAttempt).where(LoginAttempt.login == "user012@corp")):
            attempt.created_at = utcnow() - dt.timedelta(minutes=6)
    assert login(anon_client, "user012", password).status_code == 200
    with db.session_scope() as session:
        assert session.scalar(select(func.count()).select_from(LoginAttempt)
                              .where(LoginAttempt.login == "user012@corp")) == 0
        session.add(LoginAttempt(login="forgotten", created_at=utcnow() - dt.timedelta(days=2)))
    login(anon_client, "user012", "wrong")  # each failure also drops attempts no window needs
    with db.session_scope() as session:
        assert set(session.scalars(select(LoginAttempt.login))) == {"user012@corp"}  # the account, canonical


def test_throttled_login_sends_retry_after(ad, ad_env, anon_client):
    for _ in range(5):
        login(anon_client, "user016", "wrong")
    locked = login(anon_client, "user016", "wrong")
    assert locked.status_code == 429
    assert locked.headers.get("retry-after") == str(locked.json()["retry_after"])


def test_too_many_failures_from_one_address_are_throttled(ad, ad_env, anon_client, monkeypatch):
    from manager.identity.settings import get_login_settings

    monkeypatch.setenv("VDI_LOGIN_MAX_FAILURES_PER_ADDRESS", "3")
    get_login_settings.cache_clear()
    try:
        for name in ("user021", "user023", "user025"):
            assert login(anon_client, name, "wrong").status_code == 401
        response = login(anon_client, "user027", ad["AD_USER_PASSWORD"])
        assert response.status_code == 429 and response.json()["retry_after"] > 0
    finally:
        get_login_settings.cache_clear()


def test_an_unreachable_directory_is_503_and_not_a_failed_login(ad, client, anon_client, monkeypatch):
    from manager.identity.settings import get_directory_settings

    monkeypatch.setenv("VDI_AD_URL", "ldap://127.0.0.1:9")  # nothing listens there
    monkeypatch.setenv("VDI_AD_BASE_DN", ad["AD_BASE_DN"])
    monkeypatch.setenv("VDI_AD_TIMEOUT_SECONDS", "2")
    get_directory_settings.cache_clear()
    try:
        response = login(anon_client, "user011", "whatever")
        assert response.status_code == 503, response.text
        assert "directory" in response.json()["detail"]
        assert login(anon_client, "admin", "admin-test-password").status_code == 200  # local still works
    finally:
        get_directory_settings.cache_clear()
    with db.session_scope() as session:
        assert session.scalar(select(func.count()).select_from(LoginAttempt)) == 0


def wait_for_job(client, job_id: str, timeout: float = 60.0) -> dict:
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = client.get(f"{API}/jobs/{job_id}").json()
        if job["state"] in ("succeeded", "failed", "cancelled"):
            assert job["state"] == "succeeded", job
            return job
        time.sleep(0.1)
    raise AssertionError(f"job {job_id} did not finish in {timeout} s")
