"""Rewrite the tail of a query (its `sortby` and `page` clauses) without touching the conditions.

A console's column headers and page links are the query itself with another tail, as in oVirt, where paging is
part of the search (`Vms: status = up sortby name desc page 2`): the URL stays one shareable query.
"""
from __future__ import annotations

from .parser import tokenize
from .registry import Registry
from .tokens import T


def with_tail(query: str, registry: Registry, *, sort: str | None = None, descending: bool = False,
              page: int | None = None, keep_sort: bool = True) -> str:
    """`query` with its sortby/page clauses replaced. `sort` None keeps the query's own sort (if `keep_sort`);
    `page` None or 1 drops the page clause. Raises SearchError for a query that does not tokenize."""
    tokens = tokenize(query, registry, extensions=True)
    cut = next((t.start for t in tokens if t.type in (T.SORTBY, T.PAGE)), len(query))
    head = query[:cut].rstrip()
    if sort is None and keep_sort:
        sort_tokens = [t for t in tokens if t.type in (T.SORT_FIELD, T.SORT_DIR)]
        if sort_tokens:
            sort = sort_tokens[0].text
            descending = any(t.type is T.SORT_DIR and t.value == "desc" for t in sort_tokens)
    parts = [head]
    if sort:
        parts.append(f"sortby {sort}" + (" desc" if descending else ""))
    if page is not None and page > 1:
        parts.append(f"page {page}")
    return " ".join(parts)
