"""Pure parts of notifications: which events a subscription takes, how channel URLs are checked and redacted, and
the webhook signature."""
from __future__ import annotations

import hashlib
import hmac

import pytest

from core.errors import Invalid
from event_manager.notifications import Rule, check_url, sign


def event(code="host.non_responsive", severity="alert", **ids):
    return {"code": code, "severity": severity, **ids}


def test_code_glob_and_minimum_severity():
    rule = Rule("s", "host.*", 2, "", "")  # error and above
    assert rule.matches(event())
    assert not rule.matches(event(severity="warning"))
    assert not rule.matches(event(code="desktop.started"))


def test_pool_host_and_user_scopes():
    assert Rule("s", "*", 0, "pool", "p1").matches(event(pool_id="p1"))
    assert not Rule("s", "*", 0, "pool", "p1").matches(event(pool_id="p2"))
    assert not Rule("s", "*", 0, "host", "h1").matches(event())
    assert Rule("s", "*", 0, "user", "u1").matches(event(user_id="u1"))
    assert not Rule("s", "*", 0, "user", "u1").matches(event(user_id="u2"))


@pytest.mark.parametrize("url, shown", [
    ("mailto://vdi:pw@smtp.example.com:2525?to=a@example.com", "mailto://vdi:***@smtp.example.com:2525?***"),
    ("json://hooks.example.com/x/token123", "json://hooks.example.com/***"),
    ("jsons://u:p@hooks.example.com", "jsons://u:***@hooks.example.com"),
])
def test_urls_are_redacted(url, shown):
    assert check_url(url) == shown


@pytest.mark.parametrize("url", ["nosuch://x", "json://", "json://h:99999/x", "mailto://"])
def test_bad_urls_are_invalid(url):
    with pytest.raises(Invalid):
        check_url(url)


def test_signature_is_hmac_sha256_of_the_body():
    body = b'{"code": "host.fenced"}'
    assert sign("k", body) == "sha256=" + hmac.new(b"k", body, hashlib.sha256).hexdigest()
