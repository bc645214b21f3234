"""The administrator search (oVirt's search language): run a query, complete a half-typed one, run a bookmark.

The query is compiled by search_dsl against manager.search_fields.REGISTRY and executed by the database (one
statement for the page, one for the total); nothing is filtered in Python. A bad query is a 400 naming the
upstream error class and where in the query the problem is:

    {"error": "INVALID_CONDITION_VALUE", "detail": "'running' is not a valid status; use one of: ...",
     "position": 14, "end": 21, "query": "Vms: status = running"}
"""
from __future__ import annotations

import datetime as dt
import math
from typing import Annotated, Any, Union

from fastapi import APIRouter, Depends, Query
from pydantic import BaseModel, Field
from sqlalchemy import Column, and_, func, inspect, select, true
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session
from sqlalchemy.sql import visitors
from sqlalchemy.sql.util import ClauseAdapter

from core.errors import BadRequest, Forbidden, GatewayTimeout, NotFound
from manager.api import schemas as s
from manager.api.common import DbSession
from manager.auth import Principal, require
from manager.models import Bookmark
from manager.search_fields import KINDS, REGISTRY
from manager.search_values import suggest_values
from search_dsl import CompiledSearch, SearchError, compile_query, complete

router = APIRouter(tags=["search"])

STATEMENT_TIMEOUT_SECONDS = 15
MAX_PAGE_SIZE = 1000
FEW_MATCHES = 20_000  # up to this many matches a page is cut from the sorted matches (one statement)


# Planner and executor settings for the search's transaction (set_config(..., true) is SET LOCAL).
SEARCH_SETTINGS = select(*(func.set_config(name, value, true()) for name, value in (
    # A pathological query (free text over everything, many cross-references) must not hold a backend.
    ("statement_timeout", f"{STATEMENT_TIMEOUT_SECONDS}s"),
    # JIT compiles these short queries for longer than they run (hundreds of ms on 100k desktops).
    ("jit", "off"),
    # Parallel workers take longer to start than these statements run, and each search would hold several
    # backends of a few cores.
    ("max_parallel_workers_per_gather", "0"),
    # Never let the planner walk a sort-key index "until n matches": see _page_of_few_matches.
    ("enable_incremental_sort", "off"),
    ("work_mem", "64MB"),  # sort a deep page in memory, not on disk
    # The inventory a search reads is small and hot: a random page read costs about what a sequential one
    # does (the default 4 assumes disk seeks). With 4 the planner scans desktops sequentially for a semi-join
    # on its id (`Vms: tag = x`), decoding every row up to id, its 30th column, where reading the primary key
    # index alone takes half the time.
    ("random_page_cost", "1.1"),
)))


class DiskOut(s.Out):
    id: str
    path: str
    format: str
    role: str
    status: str
    storage_domain_id: str | None
    parent_id: str | None
    desktop_id: str | None
    virtual_size: int
    actual_size: int
    created_at: dt.datetime


SCHEMAS: dict[str, type[BaseModel]] = {
    "Vm": s.DesktopOut, "Host": s.HostOut, "Template": s.TemplateOut, "User": s.UserOut, "Group": s.GroupOut,
    "Pool": s.PoolOut, "Event": s.EventOut, "Cluster": s.ClusterOut, "Storage": s.StorageDomainOut,
    "Disk": DiskOut,
}
Item = Union[s.DesktopOut, s.HostOut, s.TemplateOut, s.UserOut, s.GroupOut, s.PoolOut, s.EventOut,  # noqa: UP007
             s.ClusterOut, s.StorageDomainOut, DiskOut]


class SearchPage(BaseModel):
    object: str = Field(description="the searched object as the language names it: Vm, Host, Template, ...")
    kind: str = Field(description="the API resource kind of the items: desktop, host, template, ...")
    query: str
    items: list[Item]
    total: int
    page: int
    page_size: int
    pages: int


class CompletionOut(BaseModel):
    start: int = Field(description="replace q[start:] (the word being typed) with a suggestion")
    partial: str
    suggestions: list[str]
    error: dict[str, Any] | None = Field(None, description="set when the text before the cursor is already invalid")


class BadSearch(BadRequest):
    """A query the language rejects, rendered with its upstream error class and position (400)."""

    def __init__(self, error: SearchError) -> None:
        super().__init__(error.reason)
        self.error = error

    def to_dict(self) -> dict[str, Any]:
        return _error_body(self.error)


def _error_body(error: SearchError) -> dict[str, Any]:
    return {"error": error.error_class, "detail": error.reason, "position": error.position, "end": error.end,
            "query": error.query}


def compile_search(query: str, *, page_size: int = 100, case_sensitive: bool = False) -> CompiledSearch:
    """The query compiled against the manager's fields, or BadSearch (400) saying what is wrong and where.
    Run by every search and by saving a bookmark, so that no stored query fails on every run."""
    now = dt.datetime.now().astimezone()
    if "\x00" in query:  # no database takes a NUL inside a string
        raise BadSearch(SearchError("INVALID_CHARECTER", "remove the NUL character from the query", query,
                                    query.index("\x00")))
    try:
        return compile_query(query, REGISTRY, page_size=page_size, case_sensitive=case_sensitive,
                             today=now.date(), tz=now.tzinfo)
    except SearchError as exc:
        raise BadSearch(exc) from None


def run_search(session: Session, query: str, *, page_size: int = 100, case_sensitive: bool = False) -> dict[str, Any]:
    """Run one page of a search query and return {object, kind, query, items, total, page, page_size, pages}.

    Raises BadSearch (400) for a query the language rejects and GatewayTimeout (504) when the database gives up
    after STATEMENT_TIMEOUT_SECONDS. Items are the rows of the searched object's table (read as plain rows, not
    ORM objects: nothing here writes them back), the page the query's `page N` says.
    """
    compiled = compile_search(query, page_size=page_size, case_sensitive=case_sensitive)
    obj = REGISTRY.get(compiled.query.object)
    if session.get_bind().dialect.name == "postgresql":
        session.execute(SEARCH_SETTINGS)  # for this transaction only (SET LOCAL), in one round trip
    try:
        found = _page_of_few_matches(session, compiled, obj.entity)
        if found is not None:
            rows, total = found
        else:
            rows = session.execute(many_matches_statement(compiled, obj.entity)).all()
            # a page past the end of many matches has no row to carry the total
            total = rows[0].search_total if rows else session.scalar(compiled.count) or 0
    except OperationalError as exc:
        if "statement timeout" not in str(exc.orig):
            raise
        session.rollback()
        raise GatewayTimeout(what="the search", seconds=STATEMENT_TIMEOUT_SECONDS) from None
    schema = SCHEMAS[obj.name]
    return {
        "object": obj.name, "kind": KINDS[obj.name], "query": query,
        "items": [schema.model_validate(dict(row._mapping)) for row in rows],  # a dict validates fastest
        "total": total, "page": compiled.page, "page_size": compiled.page_size,
        "pages": math.ceil(total / compiled.page_size) if total else 0,
    }


def few_matches_statement(compiled: CompiledSearch, entity: Any) -> tuple[Any, Any]:
    """(the page with a `search_total` column, the capped matches CTE) for _page_of_few_matches.

        WITH matches AS (SELECT <primary key>, <columns the order reads> FROM <entity> WHERE <filter>
                         LIMIT FEW_MATCHES + 1),
             total AS (SELECT count(*) AS n FROM matches)
        SELECT <entity>.*, total.n AS search_total
        FROM total
        LEFT JOIN (SELECT * FROM matches WHERE (SELECT n FROM total) <= FEW_MATCHES
                   ORDER BY <order> OFFSET o LIMIT n) AS page ON true
        LEFT JOIN <entity> ON <entity>.<primary key> = page.<primary key>
        ORDER BY <order>

    The matches are narrow (a key and the sort columns), so counting and sorting them moves little; the
    sort runs only when they are few (the comparison with FEW_MATCHES is a one-time filter); there is always
    one row, so the total of a page past the end comes with it; only the page's rows are read whole.
    """
    mapper = inspect(entity)
    table = mapper.local_table
    keys = list(mapper.primary_key)
    order = list(compiled.select._order_by_clauses)
    needed = {c.key: table.c[c.key] for clause in order for c in visitors.iterate(clause)
              if isinstance(c, Column) and c.table is table}
    for key in keys:
        needed.pop(key.key, None)
    matches = (compiled.select.with_only_columns(*keys, *needed.values(), maintain_column_froms=False)
               .order_by(None).offset(None).limit(FEW_MATCHES + 1).cte("search_matches"))
    total = select(func.count().label("n")).select_from(matches).cte("search_total")
    adapter = ClauseAdapter(matches)
    few = select(total.c.n).scalar_subquery() <= FEW_MATCHES
    page = (select(matches).where(few).order_by(*(adapter.traverse(c) for c in order))
            .offset(compiled.offset).limit(compiled.page_size).subquery("search_page"))
    joined = total.outerjoin(page, true()).outerjoin(table, and_(*(key == page.c[key.key] for key in keys)))
    statement = select(*table.c, total.c.n.label("search_total")).select_from(joined).order_by(*order)
    return statement, matches


def many_matches_statement(compiled: CompiledSearch, entity: Any) -> Any:
    """The page and a `search_total` column, for more than FEW_MATCHES matches: the compiled page (the planner
    walks the sort-key index, which meets a page of dense matches early) with the count as an InitPlan."""
    total = compiled.count.correlate(None).scalar_subquery().label("search_total")
    return compiled.select.with_only_columns(*inspect(entity).local_table.c, total)


def _page_of_few_matches(session: Session, compiled: CompiledSearch, entity: Any) -> tuple[list[Any], int] | None:
    """The page and the total in one statement when the query matches at most FEW_MATCHES rows, else None.

    The compiled page is `... WHERE <filter> ORDER BY <sort key>, <primary key> LIMIT n`. For it the planner
    may walk the sort-key index hoping to meet n matches early - fast when matches are dense, a read of every
    row when they are rare and its estimate was too high (free text, `= ANY(...)` lookups, cross-references).
    So first take up to FEW_MATCHES + 1 matches in whatever order is cheapest (a bitmap scan for selective
    filters; a scan that stops early for dense ones) and sort and count those; only when there are more does
    the index walk (dense matches, so it stops early) and the count run (one more statement).

    FEW_MATCHES weighs the two: up to it, one pass over the matches gives the total and the page (a bounded
    sort of narrow rows: a few milliseconds for 20,000); above it, that pass is wasted up to FEW_MATCHES + 1
    matches (an index-only scan for `status = x`, ix_desktops_power_state_name_id) and the count passes over
    all matches again. `Vms: tag = region-eu` (12,885 matches) is one pass instead of three.
    """
    statement, _ = few_matches_statement(compiled, entity)
    result = session.execute(statement).all()
    total = result[0].search_total
    if total > FEW_MATCHES:
        return None
    key = inspect(entity).primary_key[0].key
    return [row for row in result if getattr(row, key) is not None], total


SearchReader = Annotated[Principal, Depends(require("search:read"))]
BookmarkOwner = Annotated[Principal, Depends(require("bookmarks:own"))]
PageSize = Annotated[int, Query(ge=1, le=MAX_PAGE_SIZE, description="rows per page (the query's `page N` picks one)")]
CaseSensitive = Annotated[bool, Query(description="compare strings with LIKE instead of ILIKE")]


@router.get("/search", response_model=SearchPage)
def search(session: DbSession, who: SearchReader,
           q: Annotated[str, Query(description="e.g. `Vms: status = up and Hosts.name = h1* sortby name page 2`")],
           page_size: PageSize = 100, case_sensitive: CaseSensitive = False) -> dict[str, Any]:
    """Search with oVirt's language; returns one page of typed rows and the total."""
    return run_search(session, q, page_size=page_size, case_sensitive=case_sensitive)


@router.get("/search/complete", response_model=CompletionOut)
def complete_query(session: DbSession, who: SearchReader,
                   q: Annotated[str, Query(description="the query typed so far")] = "") -> dict[str, Any]:
    """Suggestions for the next word of a partly typed query: object types, fields, operators, enum values, and
    while a value is typed the first names that start with it (hosts, pools, desktops, tags, users...)."""
    result = complete(q, REGISTRY)
    suggestions = list(dict.fromkeys([*result.suggestions, *suggest_values(session, result)]))
    return {"start": result.start, "partial": result.partial, "suggestions": suggestions,
            "error": _error_body(result.error) if result.error is not None else None}


@router.get("/bookmarks/{bookmark_id}/run", response_model=SearchPage, tags=["bookmarks"])
def run_bookmark(bookmark_id: str, session: DbSession, who: BookmarkOwner, page_size: PageSize = 100,
                 case_sensitive: CaseSensitive = False) -> dict[str, Any]:
    """Run a saved search (your own bookmarks only)."""
    bookmark = session.get(Bookmark, bookmark_id)
    if bookmark is None or bookmark.owner_id != who.user_id:
        raise NotFound(kind="bookmark", id=bookmark_id)
    if not who.can("search:read"):
        raise Forbidden(action="search")
    return run_search(session, bookmark.query, page_size=page_size, case_sensitive=case_sensitive)
