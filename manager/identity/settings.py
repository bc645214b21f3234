"""Settings of the directory (VDI_AD_*) and of password login (VDI_LOGIN_*), from the environment.

Kept here rather than in manager.config: only the identity package reads them, and tests build them directly
(`DirectorySettings(url=..., base_dn=...)`) without touching the process environment.
"""
from __future__ import annotations

import functools
from pathlib import Path

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from core.enums import Role
from core.errors import Unavailable

DEFAULT_USER_FILTER = "(&(objectCategory=person)(objectClass=user))"
DEFAULT_GROUP_FILTER = "(objectClass=group)"


class DirectorySettings(BaseSettings):
    """One Active Directory domain. Empty `url` means no directory: only local accounts can log in."""

    model_config = SettingsConfigDict(env_prefix="VDI_AD_", env_file=None, extra="ignore")

    url: str = Field(default="", description="ldaps://dc.example.com:636 or ldap://dc:389 (with start_tls)")
    bind_dn: str = Field(default="", description="service account: DN, user@realm or DOMAIN\\user")
    bind_password: SecretStr = Field(default=SecretStr(""))
    base_dn: str = Field(default="", description="e.g. DC=corp,DC=example,DC=com")
    user_base_dn: str = Field(default="", description="where users are searched; empty = base_dn")
    group_base_dn: str = Field(default="", description="where groups are searched; empty = base_dn")
    user_filter: str = DEFAULT_USER_FILTER
    group_filter: str = DEFAULT_GROUP_FILTER
    start_tls: bool = Field(default=False, description="upgrade an ldap:// connection with StartTLS")
    ca_file: Path | None = Field(default=None, description="CA bundle that signed the DC's certificate")
    domain: str = Field(default="", description="NetBIOS domain (CORP); empty = first DC= label, upper case")
    name: str = Field(default="ad", description="key of this directory's sync state")
    page_size: int = Field(default=500, ge=1, le=1000)
    timeout_seconds: int = Field(default=10, ge=1, description="connect and receive timeout")
    sync_interval_seconds: int = Field(default=900, ge=30, description="period of the scheduled sync")
    # AD group name (sAMAccountName, case-insensitive) -> role, e.g. {"vdi-admins": "SuperUser"}
    role_map: dict[str, Role] = Field(default_factory=dict)
    # AD group name -> ["pool:<pool name>", "desktop:<desktop name>", ...]; a bare name means a pool
    entitlement_map: dict[str, list[str]] = Field(default_factory=dict)

    @field_validator("user_filter", "group_filter")
    @classmethod
    def _looks_like_a_filter(cls, value: str) -> str:
        value = value.strip()
        if not (value.startswith("(") and value.endswith(")")) or value.count("(") != value.count(")"):
            raise ValueError(f"{value!r} is not an LDAP filter: write it in parentheses, e.g. (objectClass=user)")
        return value

    @field_validator("url")
    @classmethod
    def _known_scheme(cls, value: str) -> str:
        value = value.strip()
        if value and not value.lower().startswith(("ldap://", "ldaps://")):
            raise ValueError(f"{value!r}: the directory URL must start with ldap:// or ldaps://")
        return value

    @model_validator(mode="after")
    def _complete(self) -> "DirectorySettings":
        if self.url and not self.base_dn:
            raise ValueError("VDI_AD_BASE_DN is required when VDI_AD_URL is set")
        if self.ca_file is not None and not self.ca_file.is_file():
            raise ValueError(f"VDI_AD_CA_FILE {self.ca_file} does not exist")
        return self

    @property
    def configured(self) -> bool:
        return bool(self.url)

    @property
    def use_ssl(self) -> bool:
        return self.url.lower().startswith("ldaps://")

    @property
    def realm(self) -> str:
        """The DNS domain from the base DN: DC=corp,DC=example,DC=com -> corp.example.com."""
        labels = [part.split("=", 1)[1] for part in self.base_dn.split(",")
                  if part.strip().lower().startswith("dc=")]
        return ".".join(label.strip() for label in labels).lower()

    @property
    def netbios_domain(self) -> str:
        if self.domain:
            return self.domain.upper()
        return (self.realm.split(".", 1)[0] or "AD").upper()

    @property
    def users_base(self) -> str:
        return self.user_base_dn or self.base_dn

    @property
    def groups_base(self) -> str:
        return self.group_base_dn or self.base_dn

    def matches_domain(self, domain: str) -> bool:
        """True when `domain` (from DOMAIN\\user or user@domain) names this directory."""
        lowered = domain.lower()
        return lowered in (self.netbios_domain.lower(), self.realm)


class LoginSettings(BaseSettings):
    """Brute-force protection (manager.identity.login): per (account, address) a lock after
    max_failures_per_login failures, window_seconds long and doubling with each further failure up to
    max_lock_seconds; per address, max_failures_per_address failures over all accounts within the window."""

    model_config = SettingsConfigDict(env_prefix="VDI_LOGIN_", env_file=None, extra="ignore")

    max_failures_per_login: int = Field(default=5, ge=1, description="per account and client address")
    max_failures_per_address: int = Field(default=20, ge=1, description="per client address, all accounts")
    window_seconds: int = Field(default=300, ge=1)
    max_lock_seconds: int = Field(default=3600, ge=1, description="the longest backoff of one address")


@functools.lru_cache(maxsize=1)
def get_directory_settings() -> DirectorySettings:
    """The process's directory settings. Raises Unavailable (503) naming the bad VDI_AD_* setting."""
    try:
        return DirectorySettings()
    except ValidationError as exc:
        problems = "; ".join(f"VDI_AD_{'_'.join(str(p) for p in e['loc']).upper()}: {e['msg']}"
                             if e["loc"] else e["msg"] for e in exc.errors())
        raise Unavailable(what="the directory", reason=f"its settings are wrong ({problems})") from None


@functools.lru_cache(maxsize=1)
def get_login_settings() -> LoginSettings:
    return LoginSettings()
