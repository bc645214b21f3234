"""The home page: one search bar taking the whole query language, the results as a table, bookmarks."""
from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import HTMLResponse

from manager.api.common import DbSession
from manager.api.search import BadSearch, run_search
from manager.auth import Principal, require
from manager.search_fields import REGISTRY
from manager.tagging import TAGGED_KINDS, tags_of
from manager.web.admin.columns import COLUMNS, PAGE_KIND, REF_PAGES, referenced_names
from manager.web.related import WHOLE, first_page, related_page
from manager.web.render import page
from search_dsl import SearchError, parse, value_text
from search_dsl.rewrite import with_tail

router = APIRouter()
SearchViewer = Annotated[Principal, Depends(require("search:read"))]
PAGE_SIZE = 100  # oVirt's SearchResultsLimit
EXAMPLES = ["Vms: status = up and cpu_usage > 50", "Vms: status = down sortby name", "Hosts: status = up",
            "Vms: loggedinuser = alice*", "Pools:", "Events: severity >= warning sortby time desc",
            "Users: department = Finance", "Vms: Hosts.name = vs-a and mem_usage > 80"]


def my_bookmarks(session, who: Principal) -> list[Any]:
    """The caller's bookmarks, through the bookmark resource's own filter (as GET /api/v1/bookmarks lists them)."""
    return related_page(session, "bookmarks", first_page(WHOLE), who)["items"]


def _sort_links(query: str, obj: str) -> dict[str, dict[str, Any]]:
    """For each sortable column: the query sorted by it (the other direction if it already is) and its state."""
    try:
        parsed = parse(query, REGISTRY, extensions=True)
    except SearchError:
        return {}
    current = parsed.sort.field if parsed.sort else None
    out = {}
    for column in COLUMNS.get(obj, []):
        if column.sort is None:
            continue
        active = current == column.sort
        descending = bool(active and not parsed.sort.descending)
        out[column.key] = {
            "query": with_tail(query, REGISTRY, sort=column.sort, descending=descending),
            "aria": ("descending" if parsed.sort.descending else "ascending") if active else None,
        }
    return out


def row_tags(session, who: Principal, result: dict[str, Any]) -> dict[str, Any]:
    """For kinds that can be tagged: each row's tags as (name, the query that finds that tag's objects), read in one
    query for the page. `selectable`: rows have checkboxes (desktops for their actions; the others to tag them)."""
    kind = result["kind"]
    if kind not in TAGGED_KINDS or not who.can("tags:read"):
        return {"selectable": kind == "desktop"}
    tags = tags_of(session, kind, [item.id for item in result["items"]])
    plural = f"{result['object']}s: tag = "
    links = {object_id: [(name, plural + text if (text := value_text(name)) else None) for name in names]
             for object_id, names in tags.items()}
    return {"row_tags": links, "tag_query": plural, "selectable": kind == "desktop" or who.can("tags:write")}


@router.get("/admin", response_class=HTMLResponse, include_in_schema=False)
def search_page(request: Request, session: DbSession, who: SearchViewer,
                q: Annotated[str, Query(max_length=4096)] = "") -> HTMLResponse:
    q = q.strip()
    ctx: dict[str, Any] = {"q": q, "examples": EXAMPLES, "bookmarks": my_bookmarks(session, who),
                           "result": None, "error": None}
    status = 200
    if q:
        try:
            result = run_search(session, q, page_size=PAGE_SIZE)
        except BadSearch as exc:
            ctx["error"] = exc.to_dict()
            status = 400
        else:
            obj = result["object"]
            pages = result["pages"]
            ctx.update(result=result, obj=obj, columns=COLUMNS.get(obj, []), page_kind=PAGE_KIND.get(obj),
                       refs=referenced_names(session, obj, result["items"], who), ref_pages=REF_PAGES,
                       sort_links=_sort_links(q, obj),
                       page_links={n: with_tail(q, REGISTRY, page=n) for n in
                                   sorted({1, result["page"] - 1, result["page"] + 1, pages} - {0, pages + 1})
                                   if 1 <= n <= max(pages, 1)},
                       **row_tags(session, who, result))
    return page(request, "admin/search.html", ctx, status=status, who=who)
