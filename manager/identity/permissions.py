"""The AD group -> role and AD group -> pool/desktop entitlement mapping (VDI_AD_ROLE_MAP,
VDI_AD_ENTITLEMENT_MAP), applied as rows marked source="directory".

Each sync makes the directory-sourced rows equal to what the mapping says: rows the mapping no longer asks for
are removed, rows made by hand (source="manual") are never touched. Group names match case-insensitively, as
in AD. A name that matches no synced group, pool or desktop is reported, not fatal: the mapping may be written
before the pool exists.
"""
from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from core.enums import PrincipalSource, Role
from event_manager.service import emit
from manager.identity.settings import DirectorySettings, get_directory_settings
from manager.models import Desktop, Entitlement, Group, Pool, RoleAssignment

DIRECTORY_SOURCE = "directory"


def parse_target(spec: str) -> tuple[str, str]:
    """'pool:eng', 'desktop:kiosk-1' or 'eng' (a pool) -> (kind, name)."""
    kind, sep, name = spec.partition(":")
    if not sep:
        return "pool", spec.strip()
    kind = kind.strip().lower()
    if kind not in ("pool", "desktop"):
        raise ValueError(f"{spec!r}: an entitlement target is pool:<name> or desktop:<name>")
    return kind, name.strip()


def apply_directory_permissions(session: Session, *, domain: str, actor: str = "system",
                                settings: DirectorySettings | None = None) -> dict[str, Any]:
    """Reconcile directory-sourced role assignments and entitlements with the mapping. Returns counts and
    the names that matched nothing."""
    settings = settings or get_directory_settings()
    groups = {g.name.lower(): g for g in session.scalars(
        select(Group).where(Group.source == PrincipalSource.AD, Group.domain == domain,
                            Group.deleted_in_directory.is_(False)))}
    unknown_groups: set[str] = set()
    unknown_targets: set[str] = set()

    wanted_roles: set[tuple[str, Role]] = set()
    for group_name, role in settings.role_map.items():
        group = groups.get(group_name.lower())
        if group is None:
            unknown_groups.add(group_name)
        else:
            wanted_roles.add((group.id, Role(role)))
    existing_roles = {(r.group_id, r.role): r for r in session.scalars(
        select(RoleAssignment).where(RoleAssignment.source == DIRECTORY_SOURCE))}
    manual_roles = {(r.group_id, r.role) for r in session.scalars(
        select(RoleAssignment).where(RoleAssignment.source != DIRECTORY_SOURCE, RoleAssignment.group_id.is_not(None)))}
    roles_removed = 0
    for key, row in existing_roles.items():
        if key not in wanted_roles:
            session.delete(row)
            roles_removed += 1
    roles_added = 0
    for group_id, role in sorted(wanted_roles - set(existing_roles) - manual_roles):
        session.add(RoleAssignment(group_id=group_id, role=role, source=DIRECTORY_SOURCE))
        roles_added += 1

    pools = {p.name: p.id for p in session.scalars(select(Pool))}
    desktops = {d.name: d.id for d in session.scalars(select(Desktop))}
    wanted_ents: set[tuple[str, str | None, str | None]] = set()
    for group_name, targets in settings.entitlement_map.items():
        group = groups.get(group_name.lower())
        if group is None:
            unknown_groups.add(group_name)
            continue
        for spec in targets:
            kind, name = parse_target(spec)
            target_id = (pools if kind == "pool" else desktops).get(name)
            if target_id is None:
                unknown_targets.add(f"{kind}:{name}")
            elif kind == "pool":
                wanted_ents.add((group.id, target_id, None))
            else:
                wanted_ents.add((group.id, None, target_id))
    existing_ents = {(e.group_id, e.pool_id, e.desktop_id): e for e in session.scalars(
        select(Entitlement).where(Entitlement.source == DIRECTORY_SOURCE))}
    manual_ents = {(e.group_id, e.pool_id, e.desktop_id) for e in session.scalars(
        select(Entitlement).where(Entitlement.source != DIRECTORY_SOURCE, Entitlement.group_id.is_not(None)))}
    ents_removed = 0
    for key, row in existing_ents.items():
        if key not in wanted_ents:
            session.delete(row)
            ents_removed += 1
    ents_added = 0
    for group_id, pool_id, desktop_id in sorted(wanted_ents - set(existing_ents) - manual_ents,
                                                key=lambda k: tuple(x or "" for x in k)):
        session.add(Entitlement(group_id=group_id, pool_id=pool_id, desktop_id=desktop_id, source=DIRECTORY_SOURCE))
        ents_added += 1
    session.flush()
    if roles_added or roles_removed or ents_added or ents_removed:
        emit(session, "directory.permissions_changed",
             f"directory mapping applied: roles +{roles_added} -{roles_removed}, entitlements +{ents_added} "
             f"-{ents_removed}", actor=actor)
    return {"roles_added": roles_added, "roles_removed": roles_removed, "entitlements_added": ents_added,
            "entitlements_removed": ents_removed, "unknown_groups": sorted(unknown_groups),
            "unknown_targets": sorted(unknown_targets)}
