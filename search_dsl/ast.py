"""The parsed form of a query. Names in it are the canonical names of the registry, never raw text."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Union

Span = tuple[int, int]


@dataclass(frozen=True)
class Condition:
    """`field op value`, or `Xref.field op value` when `xref` is set."""

    field: str
    op: str
    value: str
    xref: str | None = None
    quoted: bool = False
    span: Span = (0, 0)

    def normal(self) -> tuple:
        name = f"{self.xref}.{self.field}" if self.xref else self.field
        return (self.op, name, self.value)


@dataclass(frozen=True)
class FreeText:
    """A bare word or phrase (contains `value` in some free-text column), or `Xref = text` / `Xref != text`."""

    value: str
    op: str = "="
    xref: str | None = None
    quoted: bool = False
    span: Span = (0, 0)

    def normal(self) -> tuple:
        if self.xref:
            return ("text", self.xref, self.op, self.value)
        return ("text", self.value)


@dataclass(frozen=True)
class And:
    left: Node
    right: Node
    implicit: bool = False   # juxtaposition rather than the word AND (binds weakest)

    def normal(self) -> tuple:
        return ("and", self.left.normal(), self.right.normal())


@dataclass(frozen=True)
class Or:
    left: Node
    right: Node

    def normal(self) -> tuple:
        return ("or", self.left.normal(), self.right.normal())


@dataclass(frozen=True)
class Not:
    """Extension: `not(...)`."""

    operand: Node

    def normal(self) -> tuple:
        return ("not", self.operand.normal())


Node = Union[Condition, FreeText, And, Or, Not]


@dataclass(frozen=True)
class Sort:
    field: str
    descending: bool = False
    span: Span = (0, 0)


@dataclass(frozen=True)
class Query:
    """A parsed query: the searched object, the condition tree (None: everything), sort and page."""

    object: str
    where: Node | None
    sort: Sort | None
    page: int | None
    text: str
    extended: bool = False   # True when parentheses / not(...) were needed to read it

    def normal(self) -> dict:
        return {
            "object": self.object,
            "where": self.where.normal() if self.where is not None else None,
            "sort": (self.sort.field, "desc" if self.sort.descending else "asc") if self.sort else None,
            "page": self.page,
        }


def walk(node: Node | None):
    """Every node of a tree, parents before children."""
    if node is None:
        return
    yield node
    if isinstance(node, (And, Or)):
        yield from walk(node.left)
        yield from walk(node.right)
    elif isinstance(node, Not):
        yield from walk(node.operand)
