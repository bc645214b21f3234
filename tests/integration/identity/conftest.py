"""A real Samba AD DC for the identity tests (scripts/test-ad.sh), and the manager pointed at it.

`ad` starts the DC once per session (or reuses one already running, e.g. started by CI) and stops it at the end
if it started it. Tests that change the directory ask for `ad_reset` (restores the seeded snapshot first, ~1 s).
"""
from __future__ import annotations

import os
import ssl

import pytest

from tests.harness import samba_ad
from tests.harness.samba_ad import REALM, SEEDED_USERS  # noqa: F401 (the tests import them from here)


def _reset() -> None:
    try:
        samba_ad.reset()
    except samba_ad.DirectoryUnavailable as exc:
        pytest.fail(str(exc))


@pytest.fixture(scope="session")
def ad() -> dict[str, str]:
    if os.geteuid() != 0:
        pytest.skip("the Samba AD test DC needs root (scripts/test-ad.sh binds ports 88/389/636)")
    try:
        env, started = samba_ad.start()
    except samba_ad.DirectoryUnavailable as exc:
        pytest.fail(str(exc))
    yield env
    if started:
        samba_ad.stop()


@pytest.fixture
def ad_reset(ad) -> dict[str, str]:
    """For tests that change the directory: it is restored to the seeded snapshot afterwards (~1 s)."""
    samba_ad.mark_dirty()
    yield ad
    _reset()


@pytest.fixture
def ad_settings(ad):
    """Settings of the test DC: LDAPS verified against the script's CA, the non-admin svc-vdi account."""
    from manager.identity.settings import DirectorySettings

    return DirectorySettings(url=ad["AD_LDAPS_URL"], bind_dn=f"svc-vdi@{REALM}", bind_password=ad["AD_USER_PASSWORD"],
                             base_dn=ad["AD_BASE_DN"], ca_file=ad["AD_CA_FILE"],
                             role_map={"vdi-admins": "SuperUser", "eng-all": "HelpDesk"},
                             entitlement_map={"vdi-users": ["pool:office"], "sales-all": ["desktop:sales-kiosk"]})


@pytest.fixture
def ad_env(ad, ad_settings, monkeypatch):
    """The process environment (VDI_AD_*) pointed at the test DC, as the API, the job and the CLI read it."""
    import json

    from manager.identity.settings import get_directory_settings, get_login_settings

    values = {"URL": ad_settings.url, "BIND_DN": ad_settings.bind_dn,
              "BIND_PASSWORD": ad_settings.bind_password.get_secret_value(), "BASE_DN": ad_settings.base_dn,
              "CA_FILE": str(ad_settings.ca_file), "ROLE_MAP": json.dumps({k: str(v) for k, v in
                                                                           ad_settings.role_map.items()}),
              "ENTITLEMENT_MAP": json.dumps(ad_settings.entitlement_map)}
    for key, value in values.items():
        monkeypatch.setenv(f"VDI_AD_{key}", value)
    get_directory_settings.cache_clear()
    get_login_settings.cache_clear()
    yield get_directory_settings()
    get_directory_settings.cache_clear()
    get_login_settings.cache_clear()


@pytest.fixture
def ad_admin(ad):
    """An ldap3 connection as the domain Administrator, to change the directory from a test."""
    from ldap3 import Connection, Server, Tls

    tls = Tls(validate=ssl.CERT_REQUIRED, ca_certs_file=ad["AD_CA_FILE"])
    conn = Connection(Server(ad["AD_LDAPS_URL"], use_ssl=True, tls=tls, connect_timeout=5), ad["AD_BIND_DN"],
                      ad["AD_BIND_PASSWORD"], auto_bind=True, raise_exceptions=True)
    yield conn
    conn.unbind()


def user_dn(ad: dict[str, str], name: str) -> str:
    number = int(name[4:]) if name.startswith("user") and name[4:].isdigit() else 0
    ou = "Engineering" if 1 <= number <= SEEDED_USERS // 2 else "Sales"
    return f"CN={name},OU={ou},OU=Corp,{ad['AD_BASE_DN']}"


def group_dn(ad: dict[str, str], name: str) -> str:
    return f"CN={name},OU=Groups,OU=Corp,{ad['AD_BASE_DN']}"
