"""The parser: tokens to a `Query` tree, one `_parse_<level>` per precedence level.

Precedence, weakest first (docs/search-language.md section 1): juxtaposition (implicit AND) < OR < AND; both
connectives are left-associative, so `a or b and c d` is `(a OR (b AND c)) AND d`.

Extensions (`extensions=True`, the default): parentheses group, and `not(...)` negates a group. The
upstream language has neither - there `(` is part of a word and `not` is a free-text word, and queries
like `Vms: (web)` or `Vms: not(web)` are valid upstream as free text. So that no query upstream accepts
changes meaning, a query is first read strictly, exactly as upstream; only when that reading fails is it
read again with the extensions. A query is therefore extended only where upstream rejects it, e.g.
`Vms: name = a* and (status = up or status = paused)` (upstream: FREE_TEXT_ALLOWED_ONCE_PER_OBJ) or
`Vms: not (status = up)`. Consequence to know: inside a group write spaces around operators or several
terms - a lone unspaced `(name=x)` is a valid upstream free-text word and stays one. When the extended
reading fails as well, the error reported is the extended one if the query used `(`/`not(` before the
problem, else the strict (upstream) one.

One exception to "strict first": a bare word made only of parentheses (`Vms: status = up and (`) is valid
upstream as free text, but it is a group someone forgot to finish, not a search for the text "(" (which
`"("` still finds). Such a query is read with the extensions, and their error (an unclosed '(' with its
position) is reported.

Limits, checked while parsing so that no query reaches the compiler or the database as a tree too deep to
walk: groups nest at most MAX_NESTING deep (lexer.py) and a query has at most MAX_CONDITIONS terms.
"""
from __future__ import annotations

from collections.abc import Callable
from datetime import date

from .ast import And, Condition, FreeText, Node, Not, Or, Query, Sort
from .errors import SearchError
from .lexer import Lexer
from .registry import Registry
from .tokens import T, Token

TERM_STARTS = frozenset({T.FIELD, T.XREF, T.FREETEXT, T.LPAREN, T.NOT})
# Conditions and free-text terms in one query: connectives nest the tree one level per term, and every
# level is a frame in the compiler and in SQLAlchemy's statement compiler.
MAX_CONDITIONS = 200


def tokenize(query: str, registry: Registry, *, extensions: bool = False,
             today: date | None = None) -> list[Token]:
    """The tokens of a complete query; raises SearchError (with the upstream error class)."""
    return Lexer(query, registry, extensions=extensions, today=today).tokenize()


def parse(query: str, registry: Registry, *, extensions: bool = True, today: date | None = None) -> Query:
    """Parse a query such as ``Vms: status = up sortby name page 2`` against `registry`.

    Raises SearchError (error_class, position, message; `str()` shows a caret). With `extensions`,
    parentheses and `not(...)` are accepted where upstream would reject the query (see module doc).
    `today` fixes the date used to validate date values (default: the current date).
    """
    try:
        tokens = tokenize(query, registry, today=today)
        parsed = Parser(tokens, query).parse()
    except SearchError as strict_error:
        if not extensions:
            raise
        lexer = Lexer(query, registry, extensions=True, today=today)
        try:
            tokens = lexer.tokenize()
        except SearchError as extended_error:
            used = any(t.type in (T.LPAREN, T.NOT) and t.start <= extended_error.position
                       for t in lexer.tokens)
            if used:
                raise extended_error from None
            raise strict_error from None
        return Parser(tokens, query, extended=True).parse()
    if extensions and any(_stray_parenthesis(t) for t in tokens):
        tokens = Lexer(query, registry, extensions=True, today=today).tokenize()
        return Parser(tokens, query, extended=True).parse()
    return parsed


def _stray_parenthesis(token: Token) -> bool:
    """A bare free-text word of parentheses only: `(`, `((`, `)`, `()`."""
    return token.type is T.FREETEXT and not token.quoted and not token.text.strip("()")


class Parser:
    """Builds the tree from the lexer's tokens (whose order the lexer has already checked)."""

    CONJUNCTION: dict[T, Callable[[Node, Node], Node]] = {T.AND: And}
    DISJUNCTION: dict[T, Callable[[Node, Node], Node]] = {T.OR: Or}

    def __init__(self, tokens: list[Token], query: str, *, extended: bool = False) -> None:
        self.tokens = tokens
        self.query = query
        self.index = 0
        self.extended = extended
        self.terms = 0

    # ---- token access ------------------------------------------------------------------------------
    def _peek(self) -> Token | None:
        return self.tokens[self.index] if self.index < len(self.tokens) else None

    def _peek_type(self) -> T | None:
        token = self._peek()
        return token.type if token else None

    def _advance(self) -> Token:
        token = self.tokens[self.index]
        self.index += 1
        return token

    def _match(self, type_: T) -> Token | None:
        if self._peek_type() is type_:
            return self._advance()
        return None

    def _expect(self, type_: T, what: str) -> Token:
        token = self._match(type_)
        if token is None:
            at = self._peek()
            position = at.start if at else len(self.query)
            raise SearchError("INCOMPLETE", f"expected {what}", self.query, position,
                              at.end if at else len(self.query))
        return token

    # ---- levels ------------------------------------------------------------------------------------
    def parse(self) -> Query:
        obj = self._expect(T.OBJECT, "an object name")
        self._expect(T.COLON, "':' after the object name")
        where = self._parse_juxtaposition()
        sort = self._parse_sort()
        page = self._parse_page()
        if self._peek() is not None:
            token = self._advance()
            raise SearchError("INCOMPLETE", f"unexpected {token.text!r}", self.query, token.start, token.end)
        return Query(obj.value, where, sort, page, self.query, self.extended)

    def _parse_juxtaposition(self) -> Node | None:
        node: Node | None = None
        while self._peek_type() in TERM_STARTS:
            right = self._parse_disjunction()
            node = right if node is None else And(node, right, implicit=True)
        return node

    def _parse_disjunction(self) -> Node:
        return self._parse_binary(self._parse_conjunction, self.DISJUNCTION)

    def _parse_conjunction(self) -> Node:
        return self._parse_binary(self._parse_unary, self.CONJUNCTION)

    def _parse_binary(self, operand: Callable[[], Node], table: dict[T, Callable[[Node, Node], Node]]) -> Node:
        left = operand()
        while self._peek_type() in table:
            connective = self._advance()
            left = table[connective.type](left, operand())
        return left

    def _parse_unary(self) -> Node:
        if self._match(T.NOT):
            return Not(self._parse_group())
        return self._parse_primary()

    def _parse_group(self) -> Node:
        self._expect(T.LPAREN, "'('")
        inner = self._parse_juxtaposition()
        close = self._expect(T.RPAREN, "')'")
        if inner is None:
            raise SearchError("INVALID_POST_OR_AND_PHRASE", "a condition must come before ')'",
                              self.query, close.start, close.end)
        return inner

    def _parse_primary(self) -> Node:
        token = self._peek()
        if token is None:
            raise SearchError("INCOMPLETE", "expected a condition", self.query, len(self.query))
        if token.type is not T.LPAREN:
            self.terms += 1
            if self.terms > MAX_CONDITIONS:
                raise SearchError("QUERY_TOO_COMPLEX", f"a query has at most {MAX_CONDITIONS} conditions; "
                                  "split it, or match several values with a wildcard", self.query, token.start,
                                  token.end)
        if token.type is T.LPAREN:
            return self._parse_group()
        if token.type is T.FREETEXT:
            self._advance()
            return FreeText(token.value, "=", None, token.quoted, token.span)
        if token.type is T.FIELD:
            return self._parse_condition(None, token.start)
        xref = self._expect(T.XREF, "a condition")
        if self._match(T.DOT):
            return self._parse_condition(xref.value, xref.start)
        op = self._expect(T.OP, "'=' or '!='")
        value = self._expect(T.VALUE, "a value")
        return FreeText(value.value, op.value, xref.value, value.quoted, (xref.start, value.end))

    def _parse_condition(self, xref: str | None, start: int) -> Condition:
        field = self._expect(T.FIELD, "a field")
        op = self._expect(T.OP, "an operator")
        value = self._expect(T.VALUE, "a value")
        return Condition(field.value, op.value, value.value, xref, value.quoted, (start, value.end))

    def _parse_sort(self) -> Sort | None:
        keyword = self._match(T.SORTBY)
        if keyword is None:
            return None
        field = self._expect(T.SORT_FIELD, "a field to sort by")
        direction = self._match(T.SORT_DIR)
        end = direction.end if direction else field.end
        return Sort(field.value, bool(direction and direction.value == "desc"), (keyword.start, end))

    def _parse_page(self) -> int | None:
        if self._match(T.PAGE) is None:
            return None
        return int(self._expect(T.PAGE_VALUE, "a page number").value)
