"""The one error type of the search language.

Every problem with a query - a word the language does not know, a value a field cannot take, a query
that stops half-way - is raised as `SearchError`. It carries:

* `error_class`: the upstream oVirt `SyntaxError` name (spelling kept, e.g. ``INVALID_CHARECTER``), or one
  of the few classes this implementation adds (`OWN_CLASSES`);
* `position` / `end`: the 0-based character span of the problem in the query;
* a message saying what to fix.

`str(err)` shows the message, the query and a caret under the problem:

    INVALID_CONDITION_VALUE at 12: 'running' is not a status of Vms; use one of: down, up, ...
      Vms: status = running
                    ^^^^^^^

`SearchError` is a `core.errors.Invalid` (HTTP 422), so the API renders it like every other bad input.
"""
from __future__ import annotations

from typing import Any

from core.errors import Invalid

# Upstream error classes (SB/SyntaxError.java), spelled as upstream spells them.
UPSTREAM_CLASSES = frozenset({
    "INVALID_SEARCH_OBJECT",
    "COLON_NOT_NEXT_TO_SEARCH_OBJECT",
    "INVALID_CONDITION_RELATION",
    "INVALID_CONDITION_VALUE",
    "INVALID_SORT_FIELD",
    "INVALID_SORT_DIRECTION",
    "NOTHING_COMES_AFTER_PAGE_VALUE",
    "CONDITION_CANT_CREATE_RRELATIONS_AC",
    "INVALID_POST_COLON_PHRASE",
    "INVALID_POST_CONDITION_VALUE_PHRASE",
    "CANT_GET_CONDITION_FIELD_AC",
    "INVALID_CONDITION_FILED",
    "INVALID_POST_OR_AND_PHRASE",
    "INVALID_POST_CROSS_REF_OBJ",
    "FREE_TEXT_ALLOWED_ONCE_PER_OBJ",
    "INVALID_CHARECTER",
    "INVALID_PAGE_FEILD",
})

# Classes this implementation adds. INCOMPLETE is what upstream reports as "valid=false, no error code".
OWN_CLASSES = frozenset({
    "INCOMPLETE",            # the query stops in the middle of a term, a clause or a quoted value
    "INVALID_PAGE_VALUE",    # page 0 (upstream: negative OFFSET, SQL error) or an absurdly large page
    "UNBALANCED_PARENTHESES",  # extension: a ')' without '(' where it matters, or sortby/page inside a group
    "QUERY_TOO_LONG",        # guard against pathological input
    "QUERY_TOO_COMPLEX",     # the same: groups nested too deep, or too many conditions
})

ERROR_CLASSES = UPSTREAM_CLASSES | OWN_CLASSES


class SearchError(Invalid):
    """A query that cannot be run, with the upstream error class and the span of the problem."""

    code = "invalid_search"
    msg_fmt = "invalid search query"

    def __init__(self, error_class: str, message: str, query: str, position: int, end: int | None = None,
                 *, detect: int | None = None) -> None:
        if error_class not in ERROR_CLASSES:
            raise ValueError(f"unknown search error class {error_class!r}")
        position = max(0, min(position, len(query)))
        end = position + 1 if end is None else max(position, min(end, len(query)))
        self.error_class = error_class
        self.query = query
        self.position = position
        self.end = end
        # Index of the character being read when the problem was seen; orders competing errors.
        self.detect = position if detect is None else detect
        self.reason = message
        super().__init__(f"{error_class} at {position}: {message}")
        self.extra: dict[str, Any] = {
            "error_class": error_class,
            "position": position,
            "end": end,
        }

    @property
    def span(self) -> tuple[int, int]:
        return (self.position, self.end)

    def caret(self) -> str:
        """The query and a line of carets under the offending span (at least one caret)."""
        width = max(1, self.end - self.position)
        # Tabs and other control characters would shift the caret line; show them as spaces.
        shown = "".join(ch if ch.isprintable() else " " for ch in self.query)
        return f"  {shown}\n  {' ' * self.position}{'^' * width}"

    def __str__(self) -> str:
        return f"{self.message}\n{self.caret()}"
