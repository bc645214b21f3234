"""The plain resources of /api/v1, each described once and served by the generic CRUD router."""
from __future__ import annotations

import secrets
from typing import Any

from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from core.enums import PoolType, Role
from core.errors import Conflict, DuplicateName, InUse, Invalid
from image_manager import fileops
from manager.api import schemas as s
from manager.api.crud import CrudResource
from manager.api.search import compile_search
from manager.auth import Principal, hash_password, revoke_tokens
from manager.identity.access import revoke_access, revoke_group, revoke_pool_entitlement
from manager.identity.superusers import keep_a_superuser
from manager.jobs import enqueue
from manager.provisioning import pools
from manager.models import (Bookmark, Cluster, Desktop, Entitlement, Group, Host, Pool, RoleAssignment,
                            StorageDomain, Tag, Template, TemplateVersion, User, Volume)


def _names(items: list[str], limit: int = 10) -> str:
    shown = ", ".join(items[:limit])
    return shown + (f" and {len(items) - limit} more" if len(items) > limit else "")


def _refuse_if_used(session: Session, kind: str, name: str, users: dict[str, list[str]]) -> None:
    parts = [f"{label} {_names(names)}" for label, names in users.items() if names]
    if parts:
        raise InUse(kind=kind, name=name, users="; ".join(parts))


# ---- delete guards ---------------------------------------------------------------------------------
def _cluster_in_use(session: Session, cluster: Cluster) -> None:
    _refuse_if_used(session, "cluster", cluster.name, {
        "hosts": list(session.scalars(select(Host.name).where(Host.cluster_id == cluster.id))),
        "pools": list(session.scalars(select(Pool.name).where(Pool.cluster_id == cluster.id))),
    })


def _host_in_use(session: Session, host: Host) -> None:
    _refuse_if_used(session, "host", host.name, {
        "desktops": list(session.scalars(select(Desktop.name).where(Desktop.host_id == host.id))),
    })


def _storage_in_use(session: Session, domain: StorageDomain) -> None:
    _refuse_if_used(session, "storage domain", domain.name, {
        "templates": list(session.scalars(select(Template.name).where(Template.storage_domain_id == domain.id))),
        "volumes": list(session.scalars(select(Volume.path).where(Volume.storage_domain_id == domain.id))),
    })


def _template_in_use(session: Session, template: Template) -> None:
    versions = select(TemplateVersion.id).where(TemplateVersion.template_id == template.id)
    _refuse_if_used(session, "template", template.name, {
        "desktops": list(session.scalars(select(Desktop.name).where(or_(
            Desktop.template_version_id.in_(versions), Desktop.pending_template_version_id.in_(versions)))
            .order_by(Desktop.name))),
        "pools": list(session.scalars(select(Pool.name).where(Pool.template_id == template.id).order_by(Pool.name))),
    })


def _pool_in_use(session: Session, pool: Pool) -> None:
    _refuse_if_used(session, "pool", pool.name, {
        "desktops": list(session.scalars(select(Desktop.name).where(Desktop.pool_id == pool.id)
                                         .order_by(Desktop.name))),
    })


def _tag_in_use(session: Session, tag: Tag) -> None:
    _refuse_if_used(session, "tag", tag.name, {
        "child tags": list(session.scalars(select(Tag.name).where(Tag.parent_id == tag.id))),
    })


# ---- create/update preparation -----------------------------------------------------------------------
def _prepare_host(session: Session, values: dict[str, Any], who: Principal) -> dict[str, Any]:
    if not values.get("agent_token"):
        values["agent_token"] = secrets.token_urlsafe(32)
    return values


def _host_updated(session: Session, host: Host, values: dict[str, Any]) -> None:
    """A new display address reaches the host's domains: they are defined again (a job), and listen on it from
    their next start."""
    if {"address", "display_address"} & values.keys() and host.agent_url:
        enqueue(session, "hosts.reconcile", params={"host_id": host.id, "redefine_known": True},
                description=f"apply the display address {host.console_address or '(none)'} to host {host.name}",
                target_kind="host", target_id=host.id)


def _prepare_user(session: Session, values: dict[str, Any], who: Principal) -> dict[str, Any]:
    password = values.pop("password", None)
    if password:
        values["password_hash"] = hash_password(password)
    values.setdefault("upn", f"{values['username']}@{values.get('domain', 'local')}")
    existing = session.scalar(select(User.id).where(User.username == values["username"],
                                                    User.domain == values.get("domain", "local")))
    if existing:
        raise DuplicateName(kind="user", name=f"{values['username']}@{values.get('domain', 'local')}")
    return values


def _prepare_user_update(session: Session, user: User, values: dict[str, Any], who: Principal) -> dict[str, Any]:
    password = values.pop("password", None)
    if password:
        if user.source != "local":
            raise Invalid("only local accounts have a password here; change directory passwords in the directory")
        values["password_hash"] = hash_password(password)
        # whoever knew the old password may hold a token: revoke them all but the one making this change
        revoke_tokens(session, user.id, keep_token_id=who.token_id if who.user_id == user.id else "")
    if "username" in values or "domain" in values:
        raise Invalid("username and domain cannot change; create a new user instead")
    if values.get("enabled") is False and user.enabled:
        revoke_access(session, user, reason="disabled by an administrator", actor=who.name)
    return values


def _prepare_group(session: Session, values: dict[str, Any], who: Principal) -> dict[str, Any]:
    if session.scalar(select(Group.id).where(Group.name == values["name"],
                                             Group.domain == values.get("domain", "local"))):
        raise DuplicateName(kind="group", name=f"{values['name']}@{values.get('domain', 'local')}")
    return values


def _prepare_entitlement(session: Session, values: dict[str, Any], who: Principal) -> dict[str, Any]:
    stmt = select(Entitlement.id).where(*(getattr(Entitlement, k) == v if v is not None
                                          else getattr(Entitlement, k).is_(None) for k, v in values.items()))
    if session.scalar(stmt):
        raise Conflict("this entitlement already exists")
    return values


def _prepare_role_assignment(session: Session, values: dict[str, Any], who: Principal) -> dict[str, Any]:
    principal = RoleAssignment.user_id == values["user_id"] if values.get("user_id") \
        else RoleAssignment.group_id == values.get("group_id")
    if session.scalar(select(RoleAssignment.id).where(principal, RoleAssignment.role == values["role"])):
        raise Conflict(f"this {'user' if values.get('user_id') else 'group'} already has the role {values['role']}")
    return values


# ---- an enabled SuperUser always remains (manager.identity.superusers) -----------------------------------------
def _role_assignment_deleted(session: Session, assignment: RoleAssignment) -> None:
    if assignment.role == Role.SUPER_USER:
        keep_a_superuser(session, "removing this SuperUser role assignment")


def _user_updated(session: Session, user: User, values: dict[str, Any]) -> None:
    if values.get("enabled") is False:
        keep_a_superuser(session, f"disabling {user.username}@{user.domain}")


def _user_deleting(session: Session, user: User) -> None:
    """The held pool desktops go back through their pool's policy (not left to the foreign key, which would free
    them unreset), the sessions end and the browser consoles close, before the row goes."""
    revoke_access(session, user, reason="deleted by an administrator")


def _entitlement_deleted(session: Session, ent: Entitlement) -> None:
    if ent.pool_id is not None:
        revoke_pool_entitlement(session, ent.pool_id, actor="system")


def _user_deleted(session: Session, user: User) -> None:
    keep_a_superuser(session, f"deleting {user.username}@{user.domain}")


def _group_deleting(session: Session, group: Group) -> None:
    """Its members who were entitled to a pool only through it lose the desktops they hold there, as when an
    entitlement is deleted."""
    revoke_group(session, group.id, actor="system")


def _group_deleted(session: Session, group: Group) -> None:
    keep_a_superuser(session, f"deleting group {group.name}")


def _prepare_bookmark(session: Session, values: dict[str, Any], who: Principal) -> dict[str, Any]:
    values["owner_id"] = who.user_id
    if session.scalar(select(Bookmark.id).where(Bookmark.owner_id == who.user_id, Bookmark.name == values["name"])):
        raise DuplicateName(kind="bookmark", name=values["name"])
    compile_search(values["query"])  # a query that cannot run is refused now, not on every run
    return values


def _prepare_bookmark_update(session: Session, bookmark: Bookmark, values: dict[str, Any], who: Principal) \
        -> dict[str, Any]:
    if values.get("query") is not None:
        compile_search(values["query"])
    return values


def _prepare_pool_update(session: Session, pool: Pool, values: dict[str, Any], who: Principal) -> dict[str, Any]:
    """The pool as it would be after the change must still hold together (as PoolIn checks a new pool): at most
    `size` prestarted desktops, a window that ends after it starts, a lease, a window end or a schedule for a
    time-based pool, opening hours for time-based pools only. The pool maintenance loop starts free desktops up to
    a raised `prestarted` (a lowered one stops none). A new `size` is a resize (pools.resize_pool: its own event
    and job; refused below the desktops users hold)."""
    after = {key: values.get(key, getattr(pool, key)) for key in
             ("size", "prestarted", "window_start", "window_end", "lease_seconds", "max_lease_seconds", "schedule")}
    if after["prestarted"] > after["size"]:
        raise Invalid(f"prestarted ({after['prestarted']}) cannot exceed the pool's size ({after['size']})")
    if after["window_start"] and after["window_end"] and after["window_end"] <= after["window_start"]:
        raise Invalid("window_end must be after window_start")
    if pool.pool_type == PoolType.TIME_BASED and not (after["lease_seconds"] or after["window_end"]
                                                      or after["schedule"]):
        raise Invalid("a time_based pool needs lease_seconds, a window_end or a schedule")
    s.schedule_problem(pool.pool_type, after["schedule"], raise_as=Invalid)
    s.lease_limit_problem(after["lease_seconds"], after["max_lease_seconds"], raise_as=Invalid)
    if "size" in values:
        size = values.pop("size")
        if size != pool.size:
            pools.resize_pool(session, pool.id, size=size, prestarted=after["prestarted"], actor=who.name)
    return values


def _check_tag_parent(session: Session, tag: Tag, values: dict[str, Any], who: Principal) -> dict[str, Any]:
    parent_id = values.get("parent_id")
    seen = {tag.id}
    while parent_id is not None:
        if parent_id in seen:
            raise Invalid("parent_id would make the tag its own ancestor")
        seen.add(parent_id)
        parent = session.get(Tag, parent_id)
        parent_id = parent.parent_id if parent else None
    return values


def _check_boot_files(session: Session, values: dict[str, Any], domain_id: str | None,
                      current: Template | None = None) -> dict[str, Any]:
    """boot_kernel and boot_initrd name files inside the template's storage domain (relative to it, or absolute
    inside it; symlinks followed before the check): QEMU is given them to read, so they must never be other files
    of the host. Kept paths are checked again when the template moves to another storage domain."""
    moved = current is not None and "storage_domain_id" in values and values["storage_domain_id"] != domain_id
    domain_id = values.get("storage_domain_id", domain_id)
    for field in ("boot_kernel", "boot_initrd"):
        value = values.get(field, getattr(current, field, "") if moved else "")
        if not value:
            continue
        domain = session.get(StorageDomain, domain_id) if domain_id else None
        if domain is None:
            raise Invalid(f"{field} must be a file inside the template's storage domain: give the template a "
                          "storage_domain_id first")
        values[field] = str(fileops.resolve_inside(value, [domain.path], what=field,
                                                   where=f"template's storage domain {domain.name}"))
    return values


def _prepare_template(session: Session, values: dict[str, Any], who: Principal) -> dict[str, Any]:
    return _check_boot_files(session, values, values.get("storage_domain_id"))


def _prepare_template_update(session: Session, template: Template, values: dict[str, Any],
                             who: Principal) -> dict[str, Any]:
    return _check_boot_files(session, values, template.storage_domain_id, template)


def _template_created(session: Session, template: Template, who: Principal) -> None:
    """A template starts with version 1 (its image is attached by the image manager's import)."""
    version = TemplateVersion(template_id=template.id, number=1, name="base version")
    session.add(version)
    session.flush()
    template.latest_version_id = version.id


# ---- the resources -------------------------------------------------------------------------------------
RESOURCES: list[CrudResource] = [
    CrudResource("clusters", "cluster", Cluster, s.ClusterOut, s.ClusterIn, s.partial(s.ClusterIn, "ClusterPatch"),
                 "hosts:read", "hosts:write", before_delete=_cluster_in_use),
    CrudResource("hosts", "host", Host, s.HostOut, s.HostIn, s.partial(s.HostIn, "HostPatch"),
                 "hosts:read", "hosts:write", before_delete=_host_in_use, prepare_create=_prepare_host,
                 after_update=_host_updated,
                 sortable=("name", "created_at", "cpu_usage", "mem_usage", "status", "free_memory_mib"),
                 created_out=s.HostCreated, extra_event_fields=lambda h: {"host_id": h.id}),
    CrudResource("storage-domains", "storage domain", StorageDomain, s.StorageDomainOut, s.StorageDomainIn,
                 s.partial(s.StorageDomainIn, "StorageDomainPatch"), "storage:read", "storage:write",
                 unique=("name", "path"), before_delete=_storage_in_use),
    CrudResource("templates", "template", Template, s.TemplateOut, s.TemplateIn,
                 s.partial(s.TemplateIn, "TemplatePatch"), "templates:read", "templates:write",
                 before_delete=_template_in_use, after_create=_template_created,
                 prepare_create=_prepare_template, prepare_update=_prepare_template_update,
                 extra_event_fields=lambda t: {"template_id": t.id}),
    CrudResource("desktops", "desktop", Desktop, s.DesktopOut, s.DesktopIn, s.partial(s.DesktopIn, "DesktopPatch"),
                 "desktops:read", "desktops:write",
                 sortable=("name", "created_at", "cpu_usage", "mem_usage", "power_state", "memory_mib", "cpus"),
                 own_writes=True,  # manager/api/desktop_actions.py: jobs that define and undefine domains
                 extra_event_fields=lambda d: {"desktop_id": d.id}),
    CrudResource("pools", "pool", Pool, s.PoolOut, s.PoolIn, s.PoolPatch, "pools:read", "pools:write",
                 sortable=("name", "created_at", "size", "pool_type"), before_delete=_pool_in_use,
                 prepare_update=_prepare_pool_update, filters=("template_id", "cluster_id"),
                 extra_event_fields=lambda p: {"pool_id": p.id}),
    CrudResource("users", "user", User, s.UserOut, s.UserIn, s.partial(s.UserIn, "UserPatch"), "users:read",
                 "users:write", sortable=("username", "domain", "created_at", "last_name"), unique=(),
                 default_order=("username", "domain"), prepare_create=_prepare_user,
                 prepare_update=_prepare_user_update, after_update=_user_updated, before_delete=_user_deleting,
                 after_delete=_user_deleted,
                 extra_event_fields=lambda u: {"user_id": u.id}),
    CrudResource("groups", "group", Group, s.GroupOut, s.GroupIn, s.partial(s.GroupIn, "GroupPatch"), "users:read",
                 "users:write", unique=(), prepare_create=_prepare_group, before_delete=_group_deleting,
                 after_delete=_group_deleted),
    CrudResource("entitlements", "entitlement", Entitlement, s.EntitlementOut, s.EntitlementIn, None,
                 "entitlements:read", "entitlements:write", sortable=("created_at",), unique=(),
                 default_order=("created_at",), prepare_create=_prepare_entitlement,
                 after_delete=_entitlement_deleted, filters=("pool_id", "desktop_id", "user_id", "group_id")),
    CrudResource("role-assignments", "role assignment", RoleAssignment, s.RoleAssignmentOut, s.RoleAssignmentIn,
                 None, "users:read", "users:write", sortable=("created_at", "role"), unique=(),
                 default_order=("created_at",), filters=("user_id", "group_id"),
                 prepare_create=_prepare_role_assignment, after_delete=_role_assignment_deleted,
                 extra_event_fields=lambda a: {"user_id": a.user_id},  # a permission change, on the user's events
                 describe=lambda a: f"{a.id} (role {a.role} of " + (f"user {a.user_id})" if a.user_id
                                                                  else f"group {a.group_id})")),
    CrudResource("tags", "tag", Tag, s.TagOut, s.TagIn, s.partial(s.TagIn, "TagPatch"), "tags:read", "tags:write",
                 before_delete=_tag_in_use, prepare_update=_check_tag_parent),
    CrudResource("bookmarks", "bookmark", Bookmark, s.BookmarkOut, s.BookmarkIn, s.partial(s.BookmarkIn, "BookmarkPatch"),
                 "bookmarks:own", "bookmarks:own", unique=(), prepare_create=_prepare_bookmark,
                 prepare_update=_prepare_bookmark_update,
                 list_filter=lambda stmt, who: stmt.where(Bookmark.owner_id == who.user_id),
                 visible=lambda bookmark, who: bookmark.owner_id == who.user_id),
]

RESOURCE_BY_PATH: dict[str, CrudResource] = {r.path: r for r in RESOURCES}
