"""Directory sync (as a job, or a dry run that shows the diff), its status, and "what can this user reach, and
why (not)"."""
from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Response
from pydantic import Field
from sqlalchemy import Select, select
from sqlalchemy.orm import Session

from core.errors import Forbidden, NotFound
from manager.api import schemas as s
from manager.api.common import DbSession, Page, PageParams, Paging, paginate
from manager.api.openapi import error_responses
from manager.api.resources import RESOURCE_BY_PATH
from manager.auth import Principal, require
from manager.identity.access import explain_access, find_pool
from manager.identity.directory import Directory
from manager.identity.membership import group_members, member_groups, parent_groups
from manager.identity.settings import get_directory_settings
from manager.identity.sync import sync_directory
from manager.identity.sync_tasks import JOB_KIND, enqueue_sync
from manager.jobs import eta_seconds
from manager.models import DirectorySyncState, Group, Job, User

router = APIRouter()
UsersReader = Annotated[Principal, Depends(require("users:read"))]


class SyncIn(s.In):
    full: bool | None = Field(default=None, description="true: full sync; false: incremental when possible; "
                                                        "null: full once a day, else incremental")
    dry_run: bool = Field(default=False, description="compute and return the diff, change nothing")


@router.post("/directory/sync", tags=["directory"], status_code=202, responses=error_responses(503))
def start_sync(payload: SyncIn, session: DbSession, response: Response,
               who: Annotated[Principal, Depends(require("directory:sync"))]) -> Any:
    """Sync users and groups from Active Directory as a job (202 + the job); with dry_run, the diff (200)."""
    if payload.dry_run:
        result = sync_directory(session, Directory(get_directory_settings()), full=payload.full, dry_run=True,
                                actor=who.name)
        response.status_code = 200
        return result.summary()
    # no or a wrong configuration is a clear 503 now rather than a failed job later
    Directory(get_directory_settings())
    job = enqueue_sync(session, full=payload.full, actor=who.name)
    out = s.JobOut.model_validate(job)
    out.eta_seconds = eta_seconds(job)
    return out


@router.get("/directory/status", tags=["directory"])
def sync_status(session: DbSession, who: Annotated[Principal, Depends(require("users:read"))]) -> dict[str, Any]:
    """The configured directory (no secrets), where the last sync stopped, and the latest sync job."""
    settings = get_directory_settings()
    state = session.scalar(select(DirectorySyncState).where(DirectorySyncState.directory == settings.name))
    job = session.scalar(select(Job).where(Job.kind == JOB_KIND).order_by(Job.created_at.desc()).limit(1))
    return {
        "configured": settings.configured,
        "name": settings.name,
        "url": settings.url,
        "base_dn": settings.base_dn,
        "domain": settings.netbios_domain if settings.configured else "",
        "role_map": {group: str(role) for group, role in settings.role_map.items()},
        "entitlement_map": settings.entitlement_map,
        "highest_usn": state.highest_usn if state else 0,
        "runs": state.runs if state else 0,
        "last_sync_at": state.last_sync_at if state else None,
        "last_full_sync_at": state.last_full_sync_at if state else None,
        "last_error": state.last_error if state else "",
        "last_job": s.JobOut.model_validate(job) if job else None,
    }


@router.get("/users/{user_id}/access", tags=["users"])
def user_access(user_id: str, session: DbSession, who: Annotated[Principal, Depends(require("self:read"))],
                pool: Annotated[str | None, Query(max_length=255, description="a pool id or name: why (not)?")]
                = None) -> dict[str, Any]:
    """Which pools and desktops the user can reach and through which path (direct entitlement, group chain,
    assignment); with ?pool=, whether that pool is usable and every reason why not. `me` means the caller.
    Needs users:read, except about oneself."""
    if user_id == "me":
        user_id = who.user_id
    if user_id != who.user_id and not who.can("users:read"):
        raise Forbidden(action="see another user's access")
    user = session.get(User, user_id)
    if user is None:
        raise NotFound(kind="user", id=user_id)
    return explain_access(session, user, pool=find_pool(session, pool) if pool else None)


# ---- a group's members and the groups around it (manager.identity.membership) -----------------------------------
def group_members_page(session: Session, group_id: str, paging: PageParams, who: Principal, *,
                       nested: bool = False) -> dict[str, Any]:
    """One page of the group's member users, by user name (GET /groups/{id}/members, the group's page)."""
    group = RESOURCE_BY_PATH["groups"].fetch(session, group_id, who)
    return paginate(session, group_members(group.id, nested=nested), paging, s.UserOut,
                    sortable={"username": User.username, "domain": User.domain, "last_name": User.last_name,
                              "created_at": User.created_at},
                    default_order=[User.username, User.domain, User.id])


def _groups_page(session: Session, stmt: Select, paging: PageParams) -> dict[str, Any]:
    return paginate(session, stmt, paging, s.GroupOut, sortable={"name": Group.name, "created_at": Group.created_at},
                    default_order=[Group.name, Group.domain, Group.id])


def subgroups_page(session: Session, group_id: str, paging: PageParams, who: Principal) -> dict[str, Any]:
    """One page of the groups that are members of the group, by name (GET /groups/{id}/subgroups)."""
    return _groups_page(session, member_groups(RESOURCE_BY_PATH["groups"].fetch(session, group_id, who).id), paging)


def parents_page(session: Session, group_id: str, paging: PageParams, who: Principal) -> dict[str, Any]:
    """One page of the groups the group is a member of, by name (GET /groups/{id}/parents)."""
    return _groups_page(session, parent_groups(RESOURCE_BY_PATH["groups"].fetch(session, group_id, who).id), paging)


@router.get("/groups/{group_id}/members", response_model=Page[s.UserOut], tags=["groups"])
def list_group_members(group_id: str, session: DbSession, paging: Paging, who: UsersReader,
                       nested: Annotated[bool, Query(description="also the members of the groups nested in it")]
                       = False) -> dict[str, Any]:
    """The users in the group (paged, by user name): its direct members, or with ?nested=true everyone in it
    through its member groups too."""
    return group_members_page(session, group_id, paging, who, nested=nested)


@router.get("/groups/{group_id}/subgroups", response_model=Page[s.GroupOut], tags=["groups"])
def list_subgroups(group_id: str, session: DbSession, paging: Paging, who: UsersReader) -> dict[str, Any]:
    """The groups that are direct members of the group (paged, by name)."""
    return subgroups_page(session, group_id, paging, who)


@router.get("/groups/{group_id}/parents", response_model=Page[s.GroupOut], tags=["groups"])
def list_parent_groups(group_id: str, session: DbSession, paging: Paging, who: UsersReader) -> dict[str, Any]:
    """The groups the group is a direct member of (paged, by name)."""
    return parents_page(session, group_id, paging, who)
