"""Actions in the console: what their forms and dialogs need to show, and the new-pool page.

Every action itself is a call to the JSON API from static/actions.js (one implementation: the API's). The server
only reads here, through the same service functions the API uses: which template versions a desktop can be
re-imaged to or a pool moved to, which hosts a running desktop can be moved to, which pools a template version can be rolled out to, which templates and clusters a
new pool can use. The action toolbars (templates/admin/actions/<noun>.html) show each role only what it may do;
the API checks every call again.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import HTMLResponse
from sqlalchemy.orm import Session

from core import schedule
from core.enums import DisconnectAction, PoolType, ProtocolPolicy, ReclaimPolicy
from image_manager.service import SNAPSHOT_IN_PREVIEW, template_versions
from manager.api.common import DbSession
from manager.auth import Principal, require
from manager.models import Desktop, Pool, Template
from manager.web.related import WHOLE, first_page, related_object, related_page
from manager.web.render import page

router = APIRouter()
PoolWriter = Annotated[Principal, Depends(require("pools:write"))]


def _versions(session: Session, template_id: str | None) -> list[dict[str, Any]]:
    """The template's versions that have an image (a version without one cannot be used yet), newest first."""
    if not template_id:
        return []
    return [{"id": v.id, "number": v.number, "name": v.name} for v in reversed(template_versions(session, template_id))
            if v.volume_id]


def _desktop(session: Session, desktop: Desktop, who: Principal, ctx: dict[str, Any]) -> dict[str, Any]:
    version = related_object(session, "template-versions", desktop.template_version_id, who)
    pool = related_object(session, "pools", desktop.pool_id, who)
    previewing = next((s for s in ctx.get("snapshots", []) if s.status == SNAPSHOT_IN_PREVIEW), None)
    manual_pool = pool is not None and pool.pool_type == PoolType.MANUAL
    # GET /hosts, by name: where a running desktop can be moved (the API refuses a host that cannot take it)
    hosts = related_page(session, "hosts", first_page(WHOLE), who)["items"] if who.can("desktops:power") else []
    return {
        "reimage_versions": _versions(session, version.template_id if version else None),
        "migrate_hosts": sorted((h for h in hosts if h.id != desktop.host_id), key=lambda h: h.name),
        "previewing": previewing,
        # Who may hand this desktop to a user: the pool's writer for a manual pool's desktop, the entitlements'
        # writer for a desktop of no pool (dedicated or shared); automatic and time-based pools assign themselves.
        "assign_via": "pool" if manual_pool else ("desktop" if desktop.pool_id is None else None),
        "assign_permission": "pools:write" if manual_pool else "entitlements:write",
    }


# The pool forms' choices for a disconnected desktop (templates/admin/pool_form.html, actions/pool.html)
DISCONNECT_LABELS = {DisconnectAction.NONE: "Nothing", DisconnectAction.LOGOFF: "Log the user off",
                     DisconnectAction.RESET: "Reset the desktop to its template"}


def opening_hours(pool: Pool) -> str:
    """A pool's recurring windows, one a line ("mon-fri 08:00-18:00"), as the edit form takes them back."""
    return "\n".join(w.describe() for w in schedule.parse(pool.schedule or []))


def _pool(session: Session, pool: Pool, who: Principal, ctx: dict[str, Any]) -> dict[str, Any]:
    return {"rollout_versions": _versions(session, pool.template_id), "pool_types": list(PoolType),
            "protocol_policies": list(ProtocolPolicy), "reclaim_policies": list(ReclaimPolicy),
            "disconnect_actions": DISCONNECT_LABELS, "opening_hours": opening_hours(pool)}


def _template(session: Session, template: Template, who: Principal, ctx: dict[str, Any]) -> dict[str, Any]:
    # GET /pools?template_id=, by name
    pools = related_page(session, "pools", first_page(WHOLE), who, template_id=template.id)["items"] \
        if who.can("pools:write") else []
    return {"rollout_versions": _versions(session, template.id),
            "rollout_pools": [{"id": p.id, "name": p.name} for p in pools]}


CONTEXT: dict[str, Callable[[Session, Any, Principal, dict[str, Any]], dict[str, Any]]] = {
    "desktop": _desktop, "pool": _pool, "template": _template}


def action_context(noun: str, session: Session, obj: Any, who: Principal, ctx: dict[str, Any]) -> dict[str, Any]:
    """What the object page's action toolbar (templates/admin/actions/<noun>.html) needs beyond the page's own
    context `ctx`: the object page adds it with one call."""
    build = CONTEXT.get(noun)
    return build(session, obj, who, ctx) if build is not None else {}


@router.get("/admin/pools/new", response_class=HTMLResponse, include_in_schema=False)
def new_pool_page(request: Request, session: DbSession, who: PoolWriter,
                  template_id: Annotated[str, Query(max_length=36)] = "") -> HTMLResponse:
    """The new-pool form: POST /api/v1/pools, then POST /api/v1/pools/{id}/provision, from actions.js."""
    # GET /templates and GET /clusters, by name
    templates = related_page(session, "templates", first_page(WHOLE), who)["items"]
    clusters = related_page(session, "clusters", first_page(WHOLE), who)["items"]
    return page(request, "admin/pool_form.html", {
        "title": "New pool", "templates": templates, "clusters": clusters, "template_id": template_id,
        "pool_types": list(PoolType), "protocol_policies": list(ProtocolPolicy),
        "reclaim_policies": list(ReclaimPolicy), "disconnect_actions": DISCONNECT_LABELS}, who=who)
