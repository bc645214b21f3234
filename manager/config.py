"""Settings from the environment (VDI_*). The defaults are the embedded ones: SQLite under the data dir,
an in-process job worker, the local hypervisor."""
from __future__ import annotations

import functools
from pathlib import Path

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="VDI_", env_file=None, extra="ignore")

    data_dir: Path = Field(default=Path("var"), description="where the embedded database and runtime files live")
    database_url: str = Field(default="", description="SQLAlchemy URL; empty = sqlite:///<data_dir>/vdi.db")
    redis_url: str = Field(default="", description="Celery broker; empty = in-process worker (embedded)")
    storage_dir: Path | None = Field(default=None, description="default storage domain; empty = <data_dir>/storage")
    cache_dir: Path = Field(default=Path.home() / ".cache" / "vdi", description="built images cached outside git")
    libvirt_uri: str = Field(default="qemu:///system", description="the local hypervisor for the embedded node")
    host: str = "127.0.0.1"
    port: int = 8000
    public_url: str = Field(default="", description="how nodes reach the manager; empty = http://host:port")
    secret_key: str = Field(default="", description="signs browser sessions; empty = generated into data_dir")
    admin_password: str = Field(default="", description="bootstrap local admin's password; empty = generated")
    page_size: int = Field(default=100, ge=1, le=10000)
    max_body_bytes: int = Field(default=1 << 20, ge=1024, description="the largest request body (JSON, forms) "
                                "the manager reads; a larger one is a 413 before it is read")
    max_upload_bytes: int = Field(default=64 << 30, ge=1 << 20, description="the largest image upload "
                                  "(POST /templates/{id}/upload, streamed to disk)")
    ticket_seconds: int = Field(default=120, ge=5, le=86400)
    session_hours: int = Field(default=12, ge=1, le=24 * 30, description="a browser session's (and a login "
                               "token's) lifetime")
    api_token_max_days: int = Field(default=90, ge=1, le=3650, description="the longest an API token lives "
                                    "(POST /auth/tokens' default and upper bound; older tokens expire at it too)")
    trusted_proxies: str = Field(default="", description="comma-separated addresses of reverse proxies whose "
                                 "X-Forwarded-For names the client; empty = none (the socket's peer is the client)")
    heartbeat_seconds: float = Field(default=5.0, gt=0)
    host_dead_after_seconds: float = Field(default=30.0, gt=0)
    embedded_nodes: bool = Field(default=True, description="run the node agents listed in "
                                 "<data_dir>/embedded-nodes.json (written by `vdi demo`) inside `vdi serve`")
    log_level: str = "INFO"

    @field_validator("data_dir", "cache_dir", mode="after")
    @classmethod
    def _absolute(cls, value: Path) -> Path:
        return value.expanduser().resolve()

    @property
    def effective_database_url(self) -> str:
        return self.database_url or f"sqlite:///{self.data_dir / 'vdi.db'}"

    @property
    def effective_storage_dir(self) -> Path:
        return (self.storage_dir or self.data_dir / "storage").expanduser().resolve()

    @property
    def effective_public_url(self) -> str:
        return self.public_url or f"http://{self.host}:{self.port}"

    @property
    def embedded_jobs(self) -> bool:
        return not self.redis_url


@functools.lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
