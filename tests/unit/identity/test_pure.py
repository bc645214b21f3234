"""Pure parts of the identity package: login name forms, settings validation, GUID decoding, bind sub-codes,
sync mode choice, mapping targets, throttle key."""
from __future__ import annotations

import datetime as dt
import string
import uuid
from types import SimpleNamespace

import pytest
from hypothesis import given
from hypothesis import strategies as st
from ldap3.utils.conv import escape_filter_chars

from core.errors import Unavailable
from manager.identity.directory import (_BIND_SUBCODES, _SUBCODE, BindOutcome, Directory, guid_from_bytes,
                                        normalize_dn, user_from_entry)
from manager.identity.login import _login_key, split_login
from manager.identity.permissions import parse_target
from manager.identity.settings import DirectorySettings, get_directory_settings
from manager.identity.sync import choose_mode

NOW = dt.datetime(2026, 11, 22, 12, 0, tzinfo=dt.timezone.utc)


@pytest.mark.parametrize("login,expected", [
    ("user011", ("user011", None)), ("user011@corp.example.com", ("user011", "corp.example.com")),
    ("CORP\\user011", ("user011", "CORP")), ("a@b@c", ("a@b", "c")), ("CORP\\a@b", ("a@b", "CORP")),
])
def test_split_login(login, expected):
    assert split_login(login) == expected


def test_settings_derive_realm_and_netbios_domain():
    s = DirectorySettings(url="ldaps://dc:636", base_dn="DC=corp, DC=Example,DC=com")
    assert (s.realm, s.netbios_domain, s.users_base, s.use_ssl) == ("corp.example.com", "CORP", s.base_dn, True)
    assert s.matches_domain("corp") and s.matches_domain("CORP.example.COM") and not s.matches_domain("other")
    assert DirectorySettings(url="ldap://dc", base_dn="DC=x", domain="lab").netbios_domain == "LAB"
    assert not DirectorySettings().configured


@pytest.mark.parametrize("kwargs,needle", [
    ({"url": "http://dc", "base_dn": "DC=x"}, "ldap://"),
    ({"url": "ldap://dc"}, "BASE_DN"),
    ({"url": "ldap://dc", "base_dn": "DC=x", "user_filter": "objectClass=user"}, "not an LDAP filter"),
    ({"url": "ldap://dc", "base_dn": "DC=x", "group_filter": "(objectClass=group"}, "not an LDAP filter"),
    ({"url": "ldap://dc", "base_dn": "DC=x", "ca_file": "/nonexistent/ca.pem"}, "does not exist"),
    ({"url": "ldap://dc", "base_dn": "DC=x", "role_map": {"g": "Emperor"}}, "role_map"),
])
def test_bad_settings_are_refused_with_the_reason(kwargs, needle):
    with pytest.raises(ValueError, match=needle):
        DirectorySettings(**kwargs)


def test_bad_settings_from_the_environment_are_a_503_naming_the_variable(monkeypatch):
    monkeypatch.setenv("VDI_AD_URL", "ldap://dc")
    monkeypatch.setenv("VDI_AD_BASE_DN", "DC=x")
    monkeypatch.setenv("VDI_AD_PAGE_SIZE", "many")
    get_directory_settings.cache_clear()
    try:
        with pytest.raises(Unavailable, match="VDI_AD_PAGE_SIZE"):
            get_directory_settings()
    finally:
        get_directory_settings.cache_clear()


def test_no_directory_configured_is_a_clear_503():
    with pytest.raises(Unavailable, match="VDI_AD_URL"):
        Directory(DirectorySettings())


def test_guid_bytes_are_little_endian_fields():
    guid = uuid.UUID("8a636b28-090f-4b3c-8ea7-b416a9f230c6")
    assert guid_from_bytes(guid.bytes_le) == str(guid)
    assert guid_from_bytes(guid.bytes) != str(guid)


def test_entry_decoding_reads_raw_values_and_the_disabled_bit():
    guid = uuid.uuid4()
    entry = {"dn": "CN=Zoë,OU=x", "raw_attributes": {
        "objectGUID": [guid.bytes_le], "sAMAccountName": [b"zoe"], "givenName": ["Zoë".encode()],
        "userAccountControl": [b"514"], "uSNChanged": [b"4711"], "memberOf": [b"CN=a,DC=x", b"CN=b,DC=x"]}}
    user = user_from_entry(entry)
    assert (user.guid, user.username, user.first_name, user.enabled, user.usn) == (str(guid), "zoe", "Zoë", False,
                                                                                   4711)
    assert user.member_of == ["CN=a,DC=x", "CN=b,DC=x"] and user.upn == "" and user.email == ""
    entry["raw_attributes"]["userAccountControl"] = [b"512"]
    assert user_from_entry(entry).enabled


@pytest.mark.parametrize("message,outcome", [
    ("80090308: LdapErr: DSID-0C0903A9, comment: AcceptSecurityContext error, data 52e, v1db1",
     BindOutcome.WRONG_CREDENTIALS),
    ("80090308: LdapErr: DSID-0C0903A9, comment: AcceptSecurityContext error, data 533, v1db1", BindOutcome.DISABLED),
    ("... data 775, v2580", BindOutcome.LOCKED), ("... data 773, v4563", BindOutcome.EXPIRED),
])
def test_ad_bind_subcodes(message, outcome):
    assert _BIND_SUBCODES[_SUBCODE.search(message).group(1)] == outcome


def test_dn_keys_ignore_case_and_spaces():
    assert normalize_dn("CN=User 1, OU=Sales,DC=Corp") == normalize_dn("cn=user 1,ou=sales, dc=corp")


def state(**kw):
    base = {"highest_usn": 5000, "invocation_id": "inv-1", "last_full_sync_at": NOW - dt.timedelta(hours=1)}
    return SimpleNamespace(**(base | kw))


@pytest.mark.parametrize("st_,usn,inv,full,mode,why", [
    (None, 10, "inv-1", None, "full", "first sync"),
    (state(), 6000, "inv-1", True, "full", "requested"),
    (state(), 6000, "inv-2", None, "full", "invocationId"),
    (state(), 4000, "inv-1", None, "full", "backwards"),
    (state(last_full_sync_at=NOW - dt.timedelta(days=2)), 6000, "inv-1", None, "full", "periodic"),
    (state(last_full_sync_at=NOW - dt.timedelta(days=2)), 6000, "inv-1", False, "incremental", "5000"),
    (state(), 6000, "inv-1", None, "incremental", "after USN 5000"),
    (state(), 5000, "inv-1", None, "incremental", "after USN 5000"),
])
def test_sync_mode(st_, usn, inv, full, mode, why):
    got_mode, reason = choose_mode(st_, usn, inv, full=full, now=NOW)
    assert got_mode == mode and why in reason


def test_mapping_targets():
    assert parse_target("eng") == ("pool", "eng")
    assert parse_target("pool: eng ") == ("pool", "eng")
    assert parse_target("Desktop:kiosk-1") == ("desktop", "kiosk-1")
    with pytest.raises(ValueError, match="pool:<name> or desktop:<name>"):
        parse_target("host:x")


@given(st.text(max_size=300))
def test_throttle_key_is_storable(login):
    key = _login_key(login)
    assert "\x00" not in key and len(key) <= 255 and key.isprintable()


@given(st.text(alphabet=string.ascii_letters + string.digits + "@\\.-_", max_size=100))
def test_throttle_key_ignores_case(login):
    assert _login_key(login) == _login_key(login.upper())


@given(st.text(min_size=1, max_size=50))
def test_escaped_values_cannot_open_or_close_a_filter(value):
    escaped = escape_filter_chars(value)
    assert not any(c in escaped for c in "()*\x00")
