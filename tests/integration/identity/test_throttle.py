"""Login throttling (issue 22, item 9), through a real uvicorn server configured as `vdi serve` configures it:
one account however its name is written, per (account, address) with backoff so an attacker elsewhere cannot lock
the user out, a per-address limit over all accounts, and X-Forwarded-For believed only from configured proxies."""
from __future__ import annotations

import datetime as dt
import socket
import threading
import time

import httpx
import pytest
import uvicorn
from sqlalchemy import select

from manager import db
from manager.auth import hash_password
from manager.cli import proxy_options
from manager.identity.settings import get_login_settings
from manager.models import LoginAttempt, User, utcnow

LOGIN = "/api/v1/auth/login"
PASSWORD = "bob-password-1"


@pytest.fixture
def bob(app):
    with db.session_scope() as session:
        session.add(User(username="bob", domain="local", password_hash=hash_password(PASSWORD)))


def _serve(app, trusted_proxies: str):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning",
                                           **proxy_options(trusted_proxies)))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.05)
    return server, thread, f"http://127.0.0.1:{port}"


@pytest.fixture
def served(app, bob):
    """(base URL) of the app behind uvicorn; the test sets the trusted proxies through `request.param`."""
    running = []

    def start(trusted_proxies: str = "") -> httpx.Client:
        server, thread, url = _serve(app, trusted_proxies)
        running.append((server, thread))
        return httpx.Client(base_url=url, timeout=30)

    yield start
    for server, thread in running:
        server.should_exit = True
        thread.join(30)


def login(http: httpx.Client, name: str, password: str, via: str | None = None) -> httpx.Response:
    headers = {"X-Forwarded-For": via} if via else {}
    return http.post(LOGIN, json={"username": name, "password": password}, headers=headers)


def test_every_spelling_of_an_account_counts_against_one_limit(served):
    http = served()
    for name in ("bob", "bob@local", "LOCAL\\bob", "BOB", "Bob@LOCAL"):
        assert login(http, name, "wrong").status_code == 401
    for name in ("bob", "local\\BOB"):
        locked = login(http, name, PASSWORD)
        assert locked.status_code == 429, locked.text
        assert 0 < locked.json()["retry_after"] <= 300


def test_forwarded_for_is_ignored_unless_the_proxy_is_configured(served, monkeypatch):
    monkeypatch.setenv("VDI_LOGIN_MAX_FAILURES_PER_ADDRESS", "3")
    get_login_settings.cache_clear()
    try:
        http = served()  # no trusted proxies: a local client claiming other addresses is still 127.0.0.1
        for i, name in enumerate(("ann", "cid", "dee")):
            assert login(http, name, "wrong", via=f"203.0.113.{i}").status_code == 401
        throttled = login(http, "bob", PASSWORD, via="203.0.113.99")
        assert throttled.status_code == 429, throttled.text
        with db.session_scope() as session:
            assert set(session.scalars(select(LoginAttempt.client_address))) == {"127.0.0.1"}
    finally:
        get_login_settings.cache_clear()


def test_failures_from_one_address_do_not_lock_the_user_out_elsewhere(served):
    http = served("127.0.0.1")  # behind a configured proxy: X-Forwarded-For names the client
    attacker, user = "198.51.100.7", "192.0.2.10"
    for _ in range(5):
        assert login(http, "bob", "wrong", via=attacker).status_code == 401
    assert login(http, "bob", PASSWORD, via=attacker).status_code == 429  # the attacker's address waits
    assert login(http, "bob@local", PASSWORD, via=user).status_code == 200  # the user's does not
    assert login(http, "bob", PASSWORD, via=attacker).status_code == 429  # and the success cleared nothing there

    # backoff: each further failure after a lock doubles the next lock, up to max_lock_seconds
    waits = []
    for _ in range(4):
        with db.session_scope() as session:  # the lock has run out: move the failures back in time
            for row in session.scalars(select(LoginAttempt).where(LoginAttempt.client_address == attacker)):
                row.created_at -= dt.timedelta(hours=1)
        assert login(http, "bob", "wrong", via=attacker).status_code == 401
        waits.append(login(http, "bob", "wrong", via=attacker).json()["retry_after"])
    assert waits == [600, 1200, 2400, 3600], waits
    assert login(http, "bob", PASSWORD, via=user).status_code == 200
