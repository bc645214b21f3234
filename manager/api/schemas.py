"""Request and response shapes of the REST API (pydantic v2). Unknown fields are refused with a clear 422."""
from __future__ import annotations

import datetime as dt
from typing import Annotated, Any, Literal, Optional, get_type_hints

from pydantic import BaseModel, ConfigDict, Field, create_model, field_validator, model_validator

from core import schedule
from core.enums import (DisconnectAction, HostStatus, JobState, OsType, PoolType, PowerState, PrincipalSource,
                        ProtocolPolicy, ReclaimPolicy, Role, Severity, TaskState)

Name = Annotated[str, Field(min_length=1, max_length=255, pattern=r"^[^\x00-\x1f/\\]+$")]
# Desktop and pool names become libvirt domain names and file names: keep them simple.
MachineName = Annotated[str, Field(min_length=1, max_length=63, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")]
Id = Annotated[str, Field(min_length=1, max_length=36)]
Cpus = Annotated[int, Field(ge=1, le=64)]
MemoryMiB = Annotated[int, Field(ge=64, le=1_048_576)]
Text = Annotated[str, Field(max_length=4000)]


class In(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    @field_validator("*", mode="after")
    @classmethod
    def _no_nul(cls, value: Any) -> Any:
        """No text may hold a NUL character: the database cannot store one (Postgres refuses it), so it is a 422
        here rather than a 500 at the INSERT."""
        if _holds_nul(value):
            raise ValueError("must not contain a NUL character")
        return value


def _holds_nul(value: Any) -> bool:
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, dict):
        return any(_holds_nul(k) or _holds_nul(v) for k, v in value.items())
    if isinstance(value, (list, tuple, set, frozenset)):
        return any(_holds_nul(v) for v in value)
    return False


class Out(BaseModel):
    model_config = ConfigDict(from_attributes=True)


def out_of(name: str, source: type, descriptions: dict[str, str] | None = None,
           **extra: Any) -> type[Out]:
    """The reply schema of a service's dataclass: its fields as they are typed there (so a field added to the
    service cannot be missing from the API), with OpenAPI `descriptions` by field name; `extra` adds fields the
    dataclass computes (properties), as (type, FieldInfo) pairs."""
    described = descriptions or {}
    fields = {field: (hint, Field(description=described.get(field)))
              for field, hint in get_type_hints(source).items()}
    return create_model(name, __base__=Out, **fields, **extra)


def partial(model: type[In], name: str) -> type[In]:
    """The PATCH form of a create schema: every field optional, only the sent ones change."""
    fields: dict[str, Any] = {}
    for key, info in model.model_fields.items():
        fields[key] = (Optional[info.annotation], Field(default=None, **_constraints(info)))
    return create_model(name, __base__=In, **fields)


def _constraints(info) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for meta in info.metadata:
        for attr in ("ge", "le", "gt", "lt", "min_length", "max_length", "pattern"):
            value = getattr(meta, attr, None)
            if value is not None:
                out[attr] = value
    if info.description:
        out["description"] = info.description
    return out


# ---- clusters, hosts, storage --------------------------------------------------------------------
class ClusterIn(In):
    name: Name
    description: Text = ""
    cpu_type: Annotated[str, Field(max_length=255)] = ""
    comment: Text = ""


class ClusterOut(Out):
    id: str
    name: str
    description: str
    cpu_type: str
    comment: str
    created_at: dt.datetime


# A host name (RFC 1123 labels) or an IPv4/IPv6 literal.
_LABEL = r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
NetAddress = rf"^({_LABEL}(\.{_LABEL})*|[0-9A-Fa-f]*:[0-9A-Fa-f:.]*)?$"  # names and IPv4; IPv6 has a ':'


class HostIn(In):
    name: Name
    cluster_id: Id
    address: Annotated[str, Field(max_length=255)] = ""
    display_address: Annotated[str, Field(
        max_length=255, pattern=NetAddress,
        description="where the guests' SPICE/VNC displays listen and what a .vv names, reachable by clients (an IP "
                    "address; a host name makes the displays listen on every address); empty: the address")] = ""
    agent_url: Annotated[str, Field(max_length=1024, pattern=r"^(https?://.+)?$")] = ""
    agent_token: Annotated[str | None, Field(min_length=16, max_length=255,
                                             description="the node's bearer secret; generated when omitted")] = None
    libvirt_uri: Annotated[str, Field(max_length=1024)] = ""
    comment: Text = ""


class HostOut(Out):
    id: str
    name: str
    cluster_id: str
    address: str
    display_address: str
    agent_url: str
    libvirt_uri: str
    status: HostStatus
    cpus: int
    memory_mib: int
    free_memory_mib: int
    cpu_usage: int
    mem_usage: int
    cpu_model: str
    domain_types: str
    ksm_running: bool
    ksm_pages_shared: int
    ksm_pages_sharing: int
    active_desktops: int
    last_heartbeat_at: dt.datetime | None
    comment: str
    created_at: dt.datetime


class HostCreated(HostOut):
    agent_token: str = Field(description="shown once: configure the node agent with it")


class StorageDomainIn(In):
    name: Name
    path: Annotated[str, Field(min_length=1, max_length=1024, pattern=r"^/")]
    description: Text = ""
    comment: Text = ""


class StorageDomainOut(Out):
    id: str
    name: str
    path: str
    description: str
    comment: str
    total_bytes: int
    free_bytes: int
    used_bytes: int
    created_at: dt.datetime


# ---- templates ---------------------------------------------------------------------------------------
class TemplateIn(In):
    name: Name
    description: Text = ""
    comment: Text = ""
    os_type: OsType = OsType.OTHER_LINUX
    cpus: Cpus = 1
    memory_mib: MemoryMiB = 256
    storage_domain_id: Id | None = None
    boot_kernel: Annotated[str, Field(max_length=1024)] = ""
    boot_initrd: Annotated[str, Field(max_length=1024)] = ""
    boot_cmdline: Annotated[str, Field(max_length=1024)] = ""
    installed_apps: Text = ""


class TemplateVersionOut(Out):
    id: str
    template_id: str
    number: int
    name: str
    volume_id: str | None
    created_from_desktop_id: str | None
    created_at: dt.datetime


class TemplateOut(Out):
    id: str
    name: str
    description: str
    comment: str
    os_type: OsType
    cpus: int
    memory_mib: int
    storage_domain_id: str | None
    status: str
    boot_kernel: str
    boot_initrd: str
    boot_cmdline: str
    installed_apps: str
    latest_version_id: str | None
    created_at: dt.datetime


# ---- desktops and pools ---------------------------------------------------------------------------
Protocols = Annotated[str, Field(max_length=64, pattern=r"^(spice|rdp|vnc)(,(spice|rdp|vnc))*$")]


class DesktopIn(In):
    name: MachineName
    description: Text = ""
    comment: Text = ""
    template_version_id: Id | None = None
    cpus: Cpus = 1
    memory_mib: MemoryMiB = 256
    disk_size_gib: Annotated[int, Field(ge=0, le=65536)] = 0
    os_type: OsType = OsType.OTHER_LINUX
    host_id: Id | None = None
    pool_id: Id | None = None
    console_protocols: Protocols = "spice"
    monitors: Annotated[int, Field(ge=1, le=4)] = 1
    ha_enabled: bool = False
    ha_priority: Annotated[int, Field(ge=0, le=100)] = 0


class DesktopOut(Out):
    id: str
    name: str
    description: str
    comment: str
    template_version_id: str | None
    volume_id: str | None
    cpus: int
    memory_mib: int
    disk_size_gib: int
    os_type: OsType
    host_id: str | None
    pool_id: str | None
    power_state: PowerState
    task_state: TaskState | None
    cpu_usage: int
    mem_usage: int
    ip: str
    guest_hostname: str
    started_at: dt.datetime | None
    console_protocols: str
    monitors: int
    ha_enabled: bool
    ha_priority: int
    installed_apps: str
    logged_in_user: str
    assigned_user_id: str | None
    lease_until: dt.datetime | None
    created_at: dt.datetime


MAX_LEASE_TEXT = ("time-based pools: the longest a lease may run from when it was taken, extensions by its user "
                  "included (null: a lease cannot be extended)")


def lease_limit_problem(lease_seconds: int | None, max_lease_seconds: int | None, *, raise_as=ValueError) -> None:
    """A pool's longest lease cannot be shorter than one lease."""
    if max_lease_seconds is not None and lease_seconds is not None and max_lease_seconds < lease_seconds:
        raise raise_as(f"max_lease_seconds ({max_lease_seconds}) cannot be less than lease_seconds ({lease_seconds})")


DISCONNECT_ACTION_TEXT = ("what happens once a user's console client has left the desktop and stayed away "
                          "disconnect_after_minutes: none, logoff (as the user's own logoff: an automatic pool takes "
                          "the desktop back and resets it) or reset (the user loses the desktop, reset to its template)")
DisconnectMinutes = Annotated[int, Field(ge=0, le=7 * 24 * 60, description="minutes a session stays disconnected "
                                         "before the pool's disconnect_action (0: at the next maintenance pass)")]


NamePattern = Annotated[str, Field(max_length=255, pattern=r"^([A-Za-z0-9][A-Za-z0-9._-]*#+[A-Za-z0-9._-]*)?$",
                                   description="e.g. eng-### (the #s become a zero-padded number)")]


class ScheduleWindow(In):
    """One recurring opening window of a time-based pool, in the pool's time_zone (core.schedule)."""

    days: list[Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"]] = Field(
        min_length=1, max_length=7, description="the weekdays the window starts on")
    start: Annotated[str, Field(pattern=r"^([01][0-9]|2[0-3]):[0-5][0-9]$", description="local time HH:MM")]
    end: Annotated[str, Field(pattern=r"^([01][0-9]|2[0-3]):[0-5][0-9]$",
                              description="local time HH:MM; at or before start: the window ends the next day")]

    @field_validator("days")
    @classmethod
    def _once_each(cls, days: list[str]) -> list[str]:
        return sorted(set(days), key=schedule.DAYS.index)


SCHEDULE_TEXT = ("time-based pools: recurring opening hours (e.g. mon-fri 08:00-18:00), in time_zone; several windows "
                 "add up; empty: open whenever window_start/window_end allow. Outside them connects are refused; at "
                 "closing every running lease ends and its desktop is reclaimed by reclaim_policy")
Schedule = Annotated[list[ScheduleWindow], Field(max_length=schedule.MAX_WINDOWS, description=SCHEDULE_TEXT)]
TimeZone = Annotated[str, Field(min_length=1, max_length=64, description="IANA time zone of the schedule, e.g. "
                                "Europe/Paris (default UTC)")]


def time_zone_problem(name: str | None) -> None:
    if name is not None:
        schedule.zone(name)


def schedule_problem(pool_type: PoolType, windows: list | None, *, raise_as=ValueError) -> None:
    if windows and pool_type != PoolType.TIME_BASED:
        raise raise_as(f"schedule: only time_based pools have opening hours (this pool is {pool_type.value})")


class PoolIn(In):
    name: MachineName
    description: Text = ""
    comment: Text = ""
    pool_type: PoolType = PoolType.AUTOMATIC
    cluster_id: Id | None = None
    template_id: Id
    template_version_id: Id | None = None
    size: Annotated[int, Field(ge=0, le=100_000)] = 0
    prestarted: Annotated[int, Field(ge=0, le=100_000)] = 0
    max_desktops_per_user: Annotated[int, Field(ge=1, le=100)] = 1
    name_pattern: NamePattern = ""
    cpus: Cpus = 1
    memory_mib: MemoryMiB = 256
    protocol_policy: ProtocolPolicy = ProtocolPolicy.AUTO
    lease_seconds: Annotated[int | None, Field(ge=60, le=10 * 366 * 86400)] = None
    max_lease_seconds: Annotated[int | None, Field(ge=60, le=10 * 366 * 86400, description=MAX_LEASE_TEXT)] = None
    window_start: dt.datetime | None = None
    window_end: dt.datetime | None = None
    reclaim_policy: ReclaimPolicy = ReclaimPolicy.REIMAGE
    disconnect_action: DisconnectAction = Field(default=DisconnectAction.NONE, description=DISCONNECT_ACTION_TEXT)
    disconnect_after_minutes: DisconnectMinutes = 0
    schedule: Schedule = []
    time_zone: TimeZone = "UTC"

    @model_validator(mode="after")
    def _consistent(self) -> "PoolIn":
        if self.prestarted > self.size:
            raise ValueError(f"prestarted ({self.prestarted}) cannot exceed size ({self.size})")
        if self.window_start and self.window_end and self.window_end <= self.window_start:
            raise ValueError("window_end must be after window_start")
        if self.pool_type == PoolType.TIME_BASED and not (self.lease_seconds or self.window_end or self.schedule):
            raise ValueError("a time_based pool needs lease_seconds, a window_end or a schedule")
        schedule_problem(self.pool_type, self.schedule)
        time_zone_problem(self.time_zone)
        lease_limit_problem(self.lease_seconds, self.max_lease_seconds, raise_as=ValueError)
        return self


class PoolPatch(In):
    """What may change after a pool is created. Its template, type, cluster and hardware shape its existing
    desktops (roll out a template version, or make a new pool, instead). A new size is a resize (as POST
    /pools/{id}/resize: a job creates desktops or removes free ones, never one a user holds; a size below the
    desktops users hold is refused); a new name_pattern names the desktops created from then on."""

    size: Annotated[int | None, Field(ge=0, le=100_000, description="grow or shrink (a resize job); not below the "
                                      "desktops users hold")] = None
    name_pattern: NamePattern | None = None
    description: Text | None = None
    comment: Text | None = None
    max_desktops_per_user: Annotated[int | None, Field(ge=1, le=100)] = None
    protocol_policy: ProtocolPolicy | None = None
    prestarted: Annotated[int | None, Field(ge=0, le=100_000, description="at most the pool's size")] = None
    lease_seconds: Annotated[int | None, Field(ge=60, le=10 * 366 * 86400, description="null: no lease")] = None
    max_lease_seconds: Annotated[int | None, Field(ge=60, le=10 * 366 * 86400, description=MAX_LEASE_TEXT)] = None
    window_start: dt.datetime | None = None
    window_end: dt.datetime | None = None
    reclaim_policy: ReclaimPolicy | None = None
    disconnect_action: DisconnectAction | None = Field(default=None, description=DISCONNECT_ACTION_TEXT)
    disconnect_after_minutes: DisconnectMinutes | None = None
    schedule: Schedule | None = None
    time_zone: TimeZone | None = None

    @model_validator(mode="after")
    def _no_nulls(self) -> "PoolPatch":
        time_zone_problem(self.time_zone)
        nullable = {"lease_seconds", "max_lease_seconds", "window_start", "window_end"}
        cleared = sorted(k for k in self.model_fields_set - nullable if getattr(self, k) is None)
        if cleared:
            raise ValueError(f"{', '.join(cleared)}: give a value (null is not allowed)")
        return self


class PoolOut(Out):
    id: str
    name: str
    description: str
    comment: str
    pool_type: PoolType
    cluster_id: str | None
    template_id: str
    template_version_id: str | None
    size: int
    prestarted: int
    max_desktops_per_user: int
    name_pattern: str
    cpus: int
    memory_mib: int
    protocol_policy: ProtocolPolicy
    lease_seconds: int | None
    max_lease_seconds: int | None
    window_start: dt.datetime | None
    window_end: dt.datetime | None
    reclaim_policy: ReclaimPolicy
    disconnect_action: DisconnectAction
    disconnect_after_minutes: int
    schedule: list[ScheduleWindow]
    time_zone: str
    schedule_open: bool | None = Field(description="time-based pools with a schedule: open at the pool maintenance "
                                       "loop's last pass (null before its first)")
    created_at: dt.datetime


# ---- users, groups, entitlements -------------------------------------------------------------------
class UserIn(In):
    username: Annotated[str, Field(min_length=1, max_length=255, pattern=r"^[A-Za-z0-9._@-]+$")]
    domain: Annotated[str, Field(min_length=1, max_length=255, pattern=r"^[A-Za-z0-9._-]+$")] = "local"
    display_name: Annotated[str, Field(max_length=255)] = ""
    first_name: Annotated[str, Field(max_length=255)] = ""
    last_name: Annotated[str, Field(max_length=255)] = ""
    email: Annotated[str, Field(max_length=255)] = ""
    department: Annotated[str, Field(max_length=255)] = ""
    enabled: bool = True
    password: Annotated[str | None, Field(min_length=8, max_length=256,
                                          description="local accounts only; stored as a salted hash")] = None

    @model_validator(mode="after")
    def _upn_fits(self) -> "UserIn":
        # the account's UPN defaults to username@domain, kept in a column of 255 characters
        if len(self.username) + 1 + len(self.domain) > 255:
            raise ValueError("username@domain must be at most 255 characters")
        return self


class UserOut(Out):
    id: str
    username: str
    domain: str
    upn: str
    display_name: str
    first_name: str
    last_name: str
    email: str
    department: str
    source: PrincipalSource
    object_guid: str | None
    enabled: bool
    created_at: dt.datetime


class GroupIn(In):
    name: Name
    domain: Annotated[str, Field(min_length=1, max_length=255, pattern=r"^[A-Za-z0-9._-]+$")] = "local"
    description: Text = ""


class GroupOut(Out):
    id: str
    name: str
    domain: str
    description: str
    source: PrincipalSource
    object_guid: str | None
    created_at: dt.datetime


class EntitlementIn(In):
    user_id: Id | None = None
    group_id: Id | None = None
    pool_id: Id | None = None
    desktop_id: Id | None = None

    @model_validator(mode="after")
    def _exactly_one_each(self) -> "EntitlementIn":
        if (self.user_id is None) == (self.group_id is None):
            raise ValueError("give exactly one of user_id or group_id")
        if (self.pool_id is None) == (self.desktop_id is None):
            raise ValueError("give exactly one of pool_id or desktop_id")
        return self


class EntitlementOut(Out):
    id: str
    user_id: str | None
    group_id: str | None
    pool_id: str | None
    desktop_id: str | None
    source: str
    created_at: dt.datetime


class RoleAssignmentIn(In):
    user_id: Id | None = None
    group_id: Id | None = None
    role: Role

    @model_validator(mode="after")
    def _one_principal(self) -> "RoleAssignmentIn":
        if (self.user_id is None) == (self.group_id is None):
            raise ValueError("give exactly one of user_id or group_id")
        return self


class RoleAssignmentOut(Out):
    id: str
    user_id: str | None
    group_id: str | None
    role: Role
    created_at: dt.datetime


# ---- tags, bookmarks, events, jobs ------------------------------------------------------------------
class TagIn(In):
    name: Annotated[str, Field(min_length=1, max_length=255, pattern=r"^[A-Za-z0-9._-]+$")]
    description: Text = ""
    parent_id: Id | None = None


class TagOut(Out):
    id: str
    name: str
    description: str
    parent_id: str | None
    created_at: dt.datetime


class BookmarkIn(In):
    name: Name
    query: Annotated[str, Field(min_length=1, max_length=4000)]


class BookmarkOut(Out):
    id: str
    name: str
    query: str
    owner_id: str | None
    created_at: dt.datetime


class EventOut(Out):
    id: int
    time: dt.datetime
    severity: Severity
    code: str
    message: str
    actor: str
    user_id: str | None
    desktop_id: str | None
    host_id: str | None
    pool_id: str | None
    template_id: str | None
    job_id: str | None
    correlation_id: str


class JobOut(Out):
    id: str
    kind: str
    state: JobState
    description: str
    progress: float
    done: int
    total: int
    error: str
    result: dict[str, Any]
    created_by: str
    target_kind: str
    target_id: str
    cancel_requested: bool
    owner: str = ""  # the manager instance or worker process running it
    created_at: dt.datetime
    started_at: dt.datetime | None
    finished_at: dt.datetime | None
    eta_seconds: float | None = None

    @field_validator("result", mode="before")
    @classmethod
    def _none_is_empty(cls, value: Any) -> Any:
        return value or {}
