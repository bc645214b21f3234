"""The objects a page names besides its own (a desktop's host, pool and template version, a pool's template, the
users of a desktop's sessions ...), read as the API reads them for the viewer: through the CRUD resources' `fetch`
(GET /api/v1/<path>/{id}: the resource's read permission, its visibility, NotFound) or, for the two readable kinds
that are not CRUD resources, what their GET route reads. One helper for every kind of page, instead of a
`session.get` per page that would skip the permission and visibility checks."""
from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from sqlalchemy.orm import Session

from core.errors import NotFound
from manager.api.common import PageParams
from manager.api.resources import RESOURCE_BY_PATH
from manager.auth import Principal
from manager.db import get_or_404
from manager.models import Job, TemplateVersion

Fetch = Callable[[Session, Any, Principal], Any]
WHOLE = 1000  # the API's largest page: a related list shown whole (a group's parents, a user's roles)

# path -> (the read permission, how one is read): GET /api/v1/<path>/{id} for the CRUD resources, plus
# GET /api/v1/jobs/{id} and the versions of GET /api/v1/templates/{id}/versions.
READERS: dict[str, tuple[str, Fetch]] = {path: (r.read_permission, r.fetch) for path, r in RESOURCE_BY_PATH.items()}
READERS["jobs"] = ("jobs:read", lambda session, job_id, who: get_or_404(session, Job, job_id, "job"))
READERS["template-versions"] = ("templates:read", lambda session, version_id, who:
                                get_or_404(session, TemplateVersion, version_id, "template version"))


def may_read(path: str, who: Principal) -> bool:
    return who.can(READERS[path][0])


def related_object(session: Session, path: str, obj_id: Any, who: Principal) -> Any | None:
    """Object `obj_id` of `path` ("hosts", "template-versions" ...) as `who` may see it; None when there is no id,
    the object is gone, or `who` may not read it."""
    permission, fetch = READERS[path]
    if obj_id is None or not who.can(permission):
        return None
    try:
        return fetch(session, obj_id, who)
    except NotFound:
        return None


def related_objects(session: Session, path: str, ids: Iterable[Any], who: Principal) -> dict[Any, Any]:
    """The objects among `ids` of CRUD resource `path` that `who` may see, by id, in one query ({} when `who`
    may not read them)."""
    resource = RESOURCE_BY_PATH[path]
    return resource.fetch_many(session, ids, who) if who.can(resource.read_permission) else {}


def first_page(count: int) -> PageParams:
    """The API's first page of `count` items in its default order (what a page shows of a related list)."""
    return PageParams(page=1, per_page=count, sort=None, order="asc")


def related_page(session: Session, path: str, paging: PageParams, who: Principal, **match: Any) -> dict[str, Any]:
    """A page of CRUD resource `path` narrowed by its declared filters, as GET /api/v1/<path>?<match> answers
    `who` (no items when `who` may not read them)."""
    resource = RESOURCE_BY_PATH[path]
    if not who.can(resource.read_permission):
        return {"items": [], "total": 0, "page": paging.page, "per_page": paging.per_page, "pages": 0}
    return resource.list_page(session, paging, who, **match)
