"""The API's main resources as pydantic models (the shapes of the manager's `*Out` schemas).

Every model accepts fields it does not declare (`extra="allow"`): a newer manager that adds a field does not break
an older client, and the added field is still there (`model.model_extra`). Enumerations are plain strings, so a new
state is shown rather than refused.
"""
from __future__ import annotations

import datetime as dt
from typing import Any, Generic, TypeVar

from pydantic import BaseModel, ConfigDict

T = TypeVar("T")


class Resource(BaseModel):
    model_config = ConfigDict(extra="allow")


class Page(Resource, Generic[T]):
    """One page of a list (GET /desktops, /jobs, /events, ...)."""

    items: list[T]
    total: int
    page: int
    per_page: int
    pages: int


class Cluster(Resource):
    id: str
    name: str
    description: str = ""
    cpu_type: str = ""
    comment: str = ""
    created_at: dt.datetime | None = None


class Host(Resource):
    id: str
    name: str
    cluster_id: str
    address: str = ""
    status: str = ""
    cpus: int = 0
    memory_mib: int = 0
    free_memory_mib: int = 0
    cpu_usage: int = 0
    mem_usage: int = 0
    active_desktops: int = 0
    last_heartbeat_at: dt.datetime | None = None
    created_at: dt.datetime | None = None


class Template(Resource):
    id: str
    name: str
    description: str = ""
    os_type: str = ""
    cpus: int = 1
    memory_mib: int = 0
    status: str = ""
    latest_version_id: str | None = None
    created_at: dt.datetime | None = None


class TemplateVersion(Resource):
    id: str
    template_id: str
    number: int
    name: str = ""
    created_at: dt.datetime | None = None


class Desktop(Resource):
    id: str
    name: str
    description: str = ""
    template_version_id: str | None = None
    cpus: int = 1
    memory_mib: int = 0
    host_id: str | None = None
    pool_id: str | None = None
    power_state: str = ""
    task_state: str | None = None
    ip: str = ""
    logged_in_user: str = ""
    assigned_user_id: str | None = None
    created_at: dt.datetime | None = None


class Pool(Resource):
    id: str
    name: str
    description: str = ""
    pool_type: str = ""
    cluster_id: str | None = None
    template_id: str = ""
    template_version_id: str | None = None
    size: int = 0
    prestarted: int = 0
    created_at: dt.datetime | None = None


class StorageDomain(Resource):
    id: str
    name: str
    path: str = ""
    total_bytes: int = 0
    free_bytes: int = 0
    created_at: dt.datetime | None = None


class User(Resource):
    id: str
    username: str
    domain: str = "local"
    display_name: str = ""
    email: str = ""
    enabled: bool = True
    created_at: dt.datetime | None = None


class Group(Resource):
    id: str
    name: str
    domain: str = "local"
    description: str = ""
    created_at: dt.datetime | None = None


class Entitlement(Resource):
    id: str
    user_id: str | None = None
    group_id: str | None = None
    pool_id: str | None = None
    desktop_id: str | None = None


class RoleAssignment(Resource):
    id: str
    user_id: str | None = None
    group_id: str | None = None
    role: str


class Tag(Resource):
    id: str
    name: str
    description: str = ""
    parent_id: str | None = None


class Bookmark(Resource):
    id: str
    name: str
    query: str
    owner_id: str | None = None


class Event(Resource):
    id: int
    time: dt.datetime
    severity: str
    code: str
    message: str
    actor: str = ""
    desktop_id: str | None = None
    host_id: str | None = None
    pool_id: str | None = None
    job_id: str | None = None


class Job(Resource):
    id: str
    kind: str
    state: str
    description: str = ""
    progress: float = 0.0  # percent, 0 to 100
    done: int = 0
    total: int = 0
    error: str = ""
    result: dict[str, Any] = {}
    target_kind: str = ""
    target_id: str = ""
    cancel_requested: bool = False
    eta_seconds: float | None = None

    @property
    def fraction(self) -> float:
        """How much is done, 0.0 to 1.0."""
        return min(max(self.progress / 100.0, 0.0), 1.0)

    @property
    def finished(self) -> bool:
        return self.state in JOB_FINISHED


JOB_FINISHED = frozenset({"succeeded", "failed", "cancelled"})


class Alert(Resource):
    id: str
    kind: str
    object_kind: str
    object_id: str
    object_name: str = ""
    state: str
    severity: str
    message: str


class Session(Resource):
    id: str
    desktop_id: str
    user_id: str
    state: str
    protocol: str = ""


class Connection(Resource):
    """What the broker answers to a connect: the session, the desktop and how to reach its console."""

    session_id: str
    desktop_id: str
    desktop_name: str
    protocol: str
    console: dict[str, Any]
    file: dict[str, Any] = {}


class Subscription(Resource):
    id: str
    name: str
    code_pattern: str
    min_severity: str
    enabled: bool = True


class SearchPage(Resource):
    """One page of a search: `kind` says which model the items are (desktop, host, pool, ...)."""

    object: str
    kind: str
    query: str
    items: list[dict[str, Any]]
    total: int
    page: int
    page_size: int
    pages: int


# The model of a search's items by the page's `kind` (others stay dicts).
MODEL_OF_KIND: dict[str, type[Resource]] = {
    "desktop": Desktop, "host": Host, "pool": Pool, "template": Template, "cluster": Cluster, "user": User,
    "group": Group, "event": Event, "storage domain": StorageDomain, "storage_domain": StorageDomain,
}
