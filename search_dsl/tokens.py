"""Token types of the search language; every token carries its span in the query."""
from __future__ import annotations

import enum
from dataclasses import dataclass


class T(enum.Enum):
    OBJECT = "object"          # Vms
    COLON = "colon"            # :
    FIELD = "field"            # name           (value: canonical field name)
    XREF = "xref"              # Hosts          (value: canonical cross-reference name)
    DOT = "dot"                # .
    OP = "op"                  # = != < > <= >=
    VALUE = "value"            # the value of a condition (value: text without quotes)
    FREETEXT = "freetext"      # a bare word or quoted phrase
    AND = "and"
    OR = "or"
    SORTBY = "sortby"
    SORT_FIELD = "sort_field"
    SORT_DIR = "sort_dir"      # value: "asc" | "desc"
    PAGE = "page"
    PAGE_VALUE = "page_value"  # value: the digits
    LPAREN = "lparen"          # extension
    RPAREN = "rparen"          # extension
    NOT = "not"                # extension: not(...)


@dataclass(frozen=True)
class Token:
    type: T
    text: str          # the characters of the query this token covers
    start: int         # 0-based, inclusive
    end: int           # exclusive
    value: str = ""    # canonical name, value without quotes, operator, ...
    quoted: bool = False

    @property
    def span(self) -> tuple[int, int]:
        return (self.start, self.end)
