"""Object pages, the NetBox way: one generic page and a thin declaration per kind.

The generic part is here, once: the route `/admin/<kind>s/{id}`, the permission check (the kind's read
permission, as the API's GET of that object), the 404 page for an unknown id, the facts list, and the Events tab
(the object's events newest first, paged, through event_manager.service.query_events with the object's id filter:
what GET /api/v1/events?desktop_id=... answers). Each kind (manager/web/admin/kinds/<kind>.py) says how to load
its object, which facts to show, which related objects to gather (through the API's own service functions) and
which events are its own; its template (templates/admin/objects/<noun>.html) extends admin/object.html and lays
the related objects out. Pages only read: actions come through the JSON API from the page's script.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any
from urllib.parse import urlencode

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import HTMLResponse
from sqlalchemy.orm import Session

from event_manager.service import query_events
from manager.api import schemas as s
from manager.api.common import DbSession, PageParams, paginate
from manager.api.resources import RESOURCE_BY_PATH
from manager.api.search import BadSearch, run_search
from manager.auth import Principal, require
from manager.web.admin.actions import action_context
from manager.web.related import first_page, may_read, related_object, related_objects, related_page
from manager.web.render import page
from search_dsl import value_text

EVENTS_PER_PAGE = 25
PREVIEW_SIZE = 10  # rows of a related search shown on a page (the link opens the whole search)


@dataclass(frozen=True)
class Fact:
    """One line of an object's facts: a label and a value, formatted as the search results format it."""
    label: str
    value: Any
    fmt: str = "text"  # text | code | pre | multiline | state | percent | mib | when | bool | link
    href: str | None = None
    optional: bool = False  # left out when empty (a comment, a kernel path) instead of shown as "—"

    @property
    def shown(self) -> bool:
        return not (self.optional and self.value in (None, ""))


@dataclass(frozen=True)
class ObjectKind:
    path: str                    # the URL segment: /admin/<path>/{id}
    noun: str                    # "desktop": the template admin/objects/<noun>.html, messages
    permission: str              # what reading one needs (the API's GET of the object needs the same)
    load: Callable[[Session, str, Principal], Any]  # the object, or NotFound
    title: Callable[[Any], str]
    facts: Callable[[Session, Any, Principal], list[Fact]]  # related objects read as `who` may see them
    related: Callable[[Session, Any, Principal], dict[str, Any]] = lambda session, obj, who: {}
    # query_events filters that select this object's events (None: events do not record this kind)
    event_filter: Callable[[Any], dict[str, Any] | None] | None = None
    plural: str = ""             # the breadcrumb's label, e.g. "Desktops"
    list_href: str = "/admin"    # where the breadcrumb leads (a search, or a list page)

    @property
    def template(self) -> str:
        return f"admin/objects/{self.noun}.html"


# ---- what kinds share --------------------------------------------------------------------------------------------
def href(path: str, obj_id: Any) -> str:
    """The page of object `obj_id` of kind `path` ("desktops", "hosts", ...)."""
    return f"/admin/{path}/{obj_id}"


def user_label(user: Any) -> str:
    return f"{user.username}@{user.domain}"


def version_label(version: Any) -> str:
    label = f"version {version.number}"
    return label + (f" ({version.name})" if version.name and version.name != label else "")


def _named(obj: Any) -> str:
    return obj.name


def group_label(group: Any) -> str:
    return f"{group.name}@{group.domain}"


# The kinds of object that have a page, by noun: (their URL segment, how one is named).
PAGE_KINDS: dict[str, tuple[str, Callable[[Any], str]]] = {
    "desktop": ("desktops", _named), "host": ("hosts", _named), "pool": ("pools", _named),
    "template": ("templates", _named), "user": ("users", user_label), "group": ("groups", group_label),
    "job": ("jobs", lambda j: j.description or j.kind)}


def object_fact(session: Session, who: Principal, label: str, noun: str, obj_id: Any) -> Fact:
    """A fact naming another object as a link to its page, read as `who` may see it (its id, marked deleted,
    when it is gone; its id alone when `who` may not read that kind)."""
    path, name = PAGE_KINDS[noun]
    obj = related_object(session, path, obj_id, who)
    if obj is None:
        return Fact(label, f"{noun} {obj_id}" + (" (deleted)" if may_read(path, who) else ""))
    return Fact(label, name(obj), "link", href(path, obj_id))


def search_href(query: str) -> str:
    return "/admin?" + urlencode({"q": query})


def search_preview(session: Session, query_head: str, value: str, tail: str = "") -> dict[str, Any] | None:
    """The first PREVIEW_SIZE results and the total of the search `<query_head> <value><tail>`, and a link to
    it: a short list on the page that is the same search the link opens. None when the value cannot be
    searched for."""
    quoted = value_text(value)  # bare, or quoted as the search language reads it back
    if quoted is None:
        return None
    query = f"{query_head} {quoted}{tail}"
    try:
        result = run_search(session, query, page_size=PREVIEW_SIZE)
    except BadSearch:
        return None
    return {"query": query, "href": search_href(query), "total": result["total"], "items": result["items"]}


def resource_loader(path: str) -> Callable[[Session, str, Principal], Any]:
    """Load through the API's CRUD resource (GET /api/v1/<path>/{id}: the same visibility and NotFound)."""
    resource = RESOURCE_BY_PATH[path]
    return lambda session, obj_id, who: resource.fetch(session, obj_id, who)


def entitlements_shown(session: Session, who: Principal, shown: int, **match: str) -> dict[str, Any]:
    """The first `shown` entitlements matching `match` as GET /api/v1/entitlements?<match> pages them, each with
    its user or group and its pool or desktop (as `who` may see them; None when gone), and their total."""
    found = related_page(session, "entitlements", first_page(shown), who, **match)
    related = {column: related_objects(session, path, (getattr(e, f"{column}_id") for e in found["items"]), who)
               for path, column in (("users", "user"), ("groups", "group"), ("pools", "pool"), ("desktops", "desktop"))}
    return {"items": [{"entitlement": e, **{column: objs.get(getattr(e, f"{column}_id"))
                                            for column, objs in related.items()}} for e in found["items"]],
            "total": found["total"]}


def events_page(session: Session, filters: dict[str, Any], page_number: int) -> dict[str, Any]:
    """One page of the object's events, newest first: GET /api/v1/events with the same filters."""
    return paginate(session, query_events(filters),
                    PageParams(page=page_number, per_page=EVENTS_PER_PAGE, sort=None, order="asc"), s.EventOut)


# ---- the generic page ----------------------------------------------------------------------------------------------
def _add_page(router: APIRouter, kind: ObjectKind) -> None:
    # (a plain default, not an Annotated alias: this module's annotations are strings, resolved in its globals)
    def object_page(object_id: str, request: Request, session: DbSession,
                    who: Principal = Depends(require(kind.permission)),
                    tab: Annotated[str, Query(max_length=32)] = "overview",
                    events_page_number: Annotated[int, Query(alias="page", ge=1, le=1_000_000)] = 1) -> HTMLResponse:
        obj = kind.load(session, object_id, who)
        ctx: dict[str, Any] = {"kind": kind, "obj": obj, "title": kind.title(obj), "facts": kind.facts(session, obj, who),
                               "tabs": [("overview", "Overview")]}
        ctx.update(kind.related(session, obj, who))
        ctx.update(action_context(kind.noun, session, obj, who, ctx))  # what the actions toolbar needs
        filters = kind.event_filter(obj) if kind.event_filter is not None else None
        if filters is not None and who.can("events:read"):
            ctx["events"] = events_page(session, filters, events_page_number)
            ctx["tabs"].append(("events", "Events"))
        ctx["tab"] = tab if tab in dict(ctx["tabs"]) else "overview"
        return page(request, kind.template, ctx, who=who)

    object_page.__name__ = f"{kind.noun}_page"
    router.add_api_route(f"/admin/{kind.path}/{{object_id}}", object_page, methods=["GET"],
                         response_class=HTMLResponse, include_in_schema=False, name=f"{kind.noun}_page")


def object_router(kinds: list[ObjectKind]) -> APIRouter:
    router = APIRouter()
    for kind in kinds:
        _add_page(router, kind)
    return router
