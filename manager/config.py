"""Settings from the environment (VDI_*). The defaults are the embedded ones: SQLite under the data dir,
an in-process job worker, the local hypervisor."""
from __future__ import annotations

import functools
import os
import secrets
import socket
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="VDI_", env_file=None, extra="ignore")

    data_dir: Path = Field(default=Path("var"), description="where the embedded database and runtime files live")
    database_url: str = Field(default="", description="SQLAlchemy URL; empty = sqlite:///<data_dir>/vdi.db")
    redis_url: str = Field(default="", description="Celery broker; empty = in-process worker (embedded)")
    storage_dir: Path | None = Field(default=None, description="default storage domain; empty = <data_dir>/storage")
    import_dirs: str = Field(default="", description="comma-separated directories on the manager host that "
                             "templates are imported from, by file name; empty = <data_dir>/import")
    export_dirs: str = Field(default="", description="comma-separated directories on the manager host that "
                             "images are exported to; empty = <data_dir>/export")
    cache_dir: Path = Field(default=Path.home() / ".cache" / "vdi", description="built images cached outside git")
    libvirt_uri: str = Field(default="qemu:///system", description="the local hypervisor for the embedded node")
    host: str = "127.0.0.1"
    port: int = 8000
    public_url: str = Field(default="", description="how nodes reach the manager; empty = http://host:port")
    secret_key: str = Field(default="", description="signs browser sessions; empty = generated into data_dir")
    admin_password: str = Field(default="", description="bootstrap local admin's password; empty = generated")
    node_key_file: Path | None = Field(default=None, description="the key that seals node agents' tokens in the "
                                       "database (0600, generated when missing); every manager process of one "
                                       "installation uses the same file; empty = <data_dir>/node-key")
    page_size: int = Field(default=100, ge=1, le=10000)
    max_body_bytes: int = Field(default=1 << 20, ge=1024, description="the largest request body (JSON, forms) "
                                "the manager reads; a larger one is a 413 before it is read")
    max_upload_bytes: int = Field(default=64 << 30, ge=1 << 20, description="the largest image upload "
                                  "(POST /templates/{id}/upload, streamed to disk)")
    ticket_seconds: int = Field(default=120, ge=5, le=86400)
    spice_proxy: str = Field(default="", pattern=r"^(http://[A-Za-z0-9.:\[\]-]+:[0-9]{1,5})?$",
                             description="an HTTP CONNECT proxy that clients outside the hypervisors' network reach "
                             "the displays through, e.g. http://proxy.example.com:3128 (the .vv file's proxy=); "
                             "`vdi spice-proxy` is one; empty = clients connect to the hosts directly")
    spice_tls: bool = Field(default=False, description="SPICE over TLS: the manager's CA (<data_dir>/spice-ca.pem) "
                            "issues each host a certificate, sent to its agent (--spice-tls-dir) when the host is "
                            "reconciled, and a .vv for a display with a TLS port names the CA and the host's subject")
    display_ports: str = Field(default="5900-65535", pattern=r"^[0-9]{1,5}-[0-9]{1,5}$",
                               description="the hosts' display port range (libvirt's remote_display_port_min-max); "
                               "`vdi spice-proxy` opens tunnels to these ports only")
    console_idle_seconds: int = Field(default=900, ge=10, description="a browser console without keyboard or "
                                      "pointer input this long is closed by the proxy")
    console_max_seconds: int = Field(default=8 * 3600, ge=60, description="the longest a browser console stays "
                                     "open; the user connects again")
    session_hours: int = Field(default=12, ge=1, le=24 * 30, description="a browser session's (and a login "
                               "token's) lifetime")
    api_token_max_days: int = Field(default=90, ge=1, le=3650, description="the longest an API token lives "
                                    "(POST /auth/tokens' default and upper bound; older tokens expire at it too)")
    trusted_proxies: str = Field(default="", description="comma-separated addresses of reverse proxies whose "
                                 "X-Forwarded-For names the client; empty = none (the socket's peer is the client)")
    heartbeat_seconds: float = Field(default=5.0, gt=0)
    # Notifications (event_manager/notifications.py): how long a burst of one code is gathered into one message,
    # how often the outbox is looked at, and how long a claimed message may take before another dispatcher retries it.
    notify_gather_seconds: float = Field(default=5.0, ge=0, le=3600, description="a burst of one event code is "
                                         "gathered this long into one message per subscription")
    notify_poll_seconds: float = Field(default=1.0, gt=0, le=60, description="how often the outbox is looked at")
    notify_lease_seconds: float = Field(default=60.0, gt=0, le=3600, description="a message being sent this long "
                                        "by a dispatcher that died is sent again (with the same idempotency key)")
    host_dead_after_seconds: float = Field(default=30.0, gt=0)
    job_lease_seconds: float = Field(default=30.0, ge=0.3, le=3600, description="a running job's lease: its runner "
                                     "renews it every third of this; a job not renewed this long is resumed or "
                                     "failed by the job recovery (manager/jobs.py)")
    # Events and alerts (event_manager): how long events are kept, how often the leader purges them and runs the
    # alert checks, and the thresholds of those checks (docs/events.md).
    event_retention_days: float = Field(default=30.0, gt=0, description="events older than this many days are "
                                        "purged")
    event_housekeeping_seconds: float = Field(default=60.0, gt=0, le=86400, description="how often the leader "
                                              "runs the alert checks and the purge of old events")
    policy_seconds: float = Field(default=60.0, gt=0, le=86400, description="how often the leader runs a round of "
                                  "the policy engine (load balancing, power saving, idle desktops, memory density)")
    alert_storage_percent: float = Field(default=90.0, gt=0, le=100, description="a storage domain used this much "
                                         "or more raises the alert storage.nearly_full")
    alert_pool_percent: float = Field(default=90.0, gt=0, le=100, description="a pool with this share of its "
                                      "desktops in use or more raises the alert pool.nearly_full")
    # Host failure handling (ha_manager; what each one means and how they add up: docs/ha.md).
    ha_check_seconds: float = Field(default=1.0, gt=0, le=60, description="how often the HA monitor looks at "
                                    "every host's heartbeats")
    ha_connecting_after_seconds: float = Field(default=6.0, gt=0, description="a host whose last heartbeat is "
                                               "older than this is 'connecting' (suspected) and its agent is probed")
    ha_non_responsive_after_seconds: float = Field(default=12.0, gt=0, description="a host silent this long whose "
                                                   "agent does not answer its probe either is non-responsive")
    ha_probe_timeout_seconds: float = Field(default=2.0, gt=0, le=30, description="the direct probe of a "
                                            "suspected host's agent (GET /v1/health)")
    ha_fence_timeout_seconds: float = Field(default=30.0, gt=0, le=600, description="how long a fence agent may "
                                            "take to confirm the power-off before the next agent is tried")
    ha_fence_retry_seconds: float = Field(default=60.0, gt=0, description="a host that could not be fenced is "
                                          "tried again after this")
    ha_broken_connectivity_threshold: float = Field(default=0.5, gt=0, le=1, description="when two or more hosts "
                                                    "are unreachable together and they are at least this share "
                                                    "of the hosts, nobody is fenced (the network failed)")
    ha_restart_parallel: int = Field(default=4, ge=1, le=64, description="desktops started at once on the "
                                     "surviving hosts")
    ha_restart_retry_seconds: float = Field(default=15.0, gt=0, description="a failed or unplaceable restart is "
                                            "tried again after this")
    ha_restart_assigned: bool = Field(default=True, description="also restart desktops a user holds (assigned), "
                                      "not only those marked ha_enabled")
    ha_placement_policy: str = Field(default="spread", description="the placement policy for restarts")
    ha_host_lease_dir: str = Field(default="", description="the directory on the shared storage where node agents "
                                   "renew their hosts' storage leases (their --lease-dir, as this machine mounts "
                                   "it); empty: leases are not read, and a host that cannot be fenced keeps its "
                                   "desktops")
    ha_host_lease_margin_seconds: float = Field(default=5.0, ge=0, description="a host that cannot be fenced has "
                                                "its desktops restarted elsewhere once its lease and its heartbeats "
                                                "have been silent for the lease's ttl plus this")
    # Manager HA: several `vdi serve` on one database elect one leader for the singleton loops (docs/ha.md).
    instance_id: str = Field(default="", max_length=255, description="this manager process's name among several "
                             "on one database, unique among the live ones; empty = <hostname>:<port>:<pid>")
    ha_lease_ttl_seconds: float = Field(default=12.0, ge=1, le=600, description="the leader's lease lasts this long "
                                        "after each renewal; a standby takes over once it has run out")
    ha_lease_renew_seconds: float = Field(default=4.0, gt=0, description="how often the leader renews its lease "
                                          "(and a standby polls it); less than the ttl")
    ha_takeover_quiet_seconds: float = Field(default=10.0, ge=0, description="after a takeover the new leader's "
                                             "host-liveness loop waits this long, so node agents failing over "
                                             "between managers deliver a heartbeat before any host is judged")
    embedded_nodes: bool = Field(default=True, description="run the node agents listed in "
                                 "<data_dir>/embedded-nodes.json (written by `vdi demo`) inside `vdi serve`")
    metrics_token: str = Field(default="", description="a bearer token that may read GET /metrics (for a "
                               "Prometheus scraper) besides any API token with system:read; empty = API tokens only")
    log_level: str = "INFO"
    log_format: Literal["text", "json"] = Field(default="text", description="json: one JSON object per log line, "
                                                "with the request id and correlation id (manager/logs.py)")

    @field_validator("data_dir", "cache_dir", mode="after")
    @classmethod
    def _absolute(cls, value: Path) -> Path:
        return value.expanduser().resolve()

    @model_validator(mode="after")
    def _lease_renewed_within_ttl(self) -> "Settings":
        if self.ha_lease_renew_seconds >= self.ha_lease_ttl_seconds:
            raise ValueError(f"VDI_HA_LEASE_RENEW_SECONDS ({self.ha_lease_renew_seconds:g}) must be less than "
                             f"VDI_HA_LEASE_TTL_SECONDS ({self.ha_lease_ttl_seconds:g})")
        return self

    @property
    def effective_instance_id(self) -> str:
        # the pid too: every `vdi serve --workers N` process is an instance of its own
        return self.instance_id or f"{socket.gethostname()}:{self.port}:{os.getpid()}"

    @property
    def effective_database_url(self) -> str:
        return self.database_url or f"sqlite:///{self.data_dir / 'vdi.db'}"

    @property
    def effective_node_key_file(self) -> Path:
        return (self.node_key_file or self.data_dir / "node-key").expanduser().resolve()

    @property
    def effective_storage_dir(self) -> Path:
        return (self.storage_dir or self.data_dir / "storage").expanduser().resolve()

    @property
    def effective_import_dirs(self) -> list[Path]:
        return _dir_list(self.import_dirs) or [self.data_dir / "import"]

    @property
    def effective_export_dirs(self) -> list[Path]:
        return _dir_list(self.export_dirs) or [self.data_dir / "export"]

    @property
    def effective_public_url(self) -> str:
        return self.public_url or f"http://{self.host}:{self.port}"

    @property
    def embedded_jobs(self) -> bool:
        return not self.redis_url


def _dir_list(value: str) -> list[Path]:
    return [Path(part.strip()).expanduser().resolve() for part in value.split(",") if part.strip()]


@functools.lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()


# The data directory holds secrets (the SQLite database, admin-password, embedded-nodes.json, node-key), each 0600.
# Others may traverse it but not list it: QEMU runs as libvirt-qemu and must reach the storage directory inside it.
DATA_DIR_MODE = 0o711
PRIVATE_FILE_MODE = 0o600


def ensure_data_dir(path: Path) -> Path:
    """Create the data directory (or a folder in it that holds secrets) with mode 0711; an older install's
    world-listable 0755 is closed to 0711."""
    path.mkdir(mode=DATA_DIR_MODE, parents=True, exist_ok=True)
    if stat.S_IMODE(path.stat().st_mode) != DATA_DIR_MODE:
        path.chmod(DATA_DIR_MODE)
    return path


def open_private(path: Path, flags: int = os.O_WRONLY | os.O_CREAT | os.O_TRUNC) -> int:
    """A file descriptor of a secret file, created 0600 (the O_CREAT mode, never readable by others in between); a
    missing folder is created 0711. An existing file is brought to 0600 through the descriptor before anything is
    written."""
    if not path.parent.is_dir():
        ensure_data_dir(path.parent)
    fd = os.open(path, flags, PRIVATE_FILE_MODE)
    if stat.S_IMODE(os.fstat(fd).st_mode) != PRIVATE_FILE_MODE:
        os.fchmod(fd, PRIVATE_FILE_MODE)
    return fd


def write_private(path: Path, text: str) -> None:
    """Write a secret file (mode 0600, see open_private)."""
    with os.fdopen(open_private(path), "w") as fh:
        fh.write(text)


def create_private_once(path: Path, make: Callable[[], str]) -> None:
    """Create the secret file `path` with the text `make()` returns unless it exists: written 0600 under a spare name
    first and linked into place, so no one ever reads half a file, and when two processes create it at once the
    first link wins and both use that file."""
    if path.exists():
        return
    spare = path.with_name(f".{path.name}.{secrets.token_hex(8)}")
    with os.fdopen(open_private(spare, os.O_WRONLY | os.O_CREAT | os.O_EXCL), "w") as fh:
        fh.write(make())
    try:
        os.link(spare, path)
    except FileExistsError:
        pass
    finally:
        spare.unlink()
