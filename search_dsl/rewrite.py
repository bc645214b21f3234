"""Rewrite the tail of a query (its `sortby` and `page` clauses) without touching the conditions.

A console's column headers and page links are the query itself with another tail, as in oVirt, where paging is
part of the search (`Vms: status = up sortby name desc page 2`): the URL stays one shareable query. A results
page needs a dozen such links, so the query is read once (`split_tail`) and each link is a string operation.
"""
from __future__ import annotations

from dataclasses import dataclass

from .parser import tokenize
from .registry import Registry
from .tokens import T


@dataclass(frozen=True)
class Tail:
    """A query cut before its sortby/page clauses: `head` (object and conditions) and its own sort."""

    head: str
    sort: str | None
    descending: bool

    def rewritten(self, *, sort: str | None = None, descending: bool = False, page: int | None = None,
                  keep_sort: bool = True) -> str:
        """The query with another tail. `sort` None keeps the query's own sort (if `keep_sort`); `page` None or 1
        drops the page clause."""
        if sort is None and keep_sort:
            sort, descending = self.sort, self.descending
        parts = [self.head]
        if sort:
            parts.append(f"sortby {sort}" + (" desc" if descending else ""))
        if page is not None and page > 1:
            parts.append(f"page {page}")
        return " ".join(parts)


def split_tail(query: str, registry: Registry) -> Tail:
    """Read `query` once; raises SearchError for a query that does not tokenize."""
    tokens = tokenize(query, registry, extensions=True)
    cut = next((t.start for t in tokens if t.type in (T.SORTBY, T.PAGE)), len(query))
    sort_field = next((t.text for t in tokens if t.type is T.SORT_FIELD), None)
    descending = any(t.type is T.SORT_DIR and t.value == "desc" for t in tokens)
    return Tail(query[:cut].rstrip(), sort_field, descending)


def with_tail(query: str, registry: Registry, **changes) -> str:
    """`query` with its sortby/page clauses replaced (see Tail.rewritten)."""
    return split_tail(query, registry).rewritten(**changes)
