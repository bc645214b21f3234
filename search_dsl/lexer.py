"""The tokenizer: a state machine that decides, as upstream oVirt does, what each word of a query is.

Upstream reads the query one character at a time and emits a token as soon as the text read so far
*equals* a word it expects in the current state; which words it expects depends on the searched object's
catalogue. That is why tokenizing needs the `Registry`, and why it decides validity: `Vms: hostname = x`
fails because `host` is a cross-reference and is taken before `name` is seen. The states and what they
accept (oVirt's SyntaxChecker; for users, docs/search-language.md section 1):

* BEGIN: an object spelling, then one optional plural `s`; SEARCH_OBJECT: only `:`.
* after `:` (COLON): a field only if followed by ` ! = < >` (so `Cluster: name*` is free text), SORTBY,
  PAGE, a cross-reference (no lookahead), else a free-text word.
* after AND/OR: a field (no lookahead), a cross-reference, else free text.
* after a value: field, SORTBY, PAGE, cross-reference, AND, OR, in that order, each taken as soon as the
  word equals it (`orange` is OR + `ange`); a word that is still the start of a field name, SORTBY, an
  object name, AND or OR waits (so a query ending in `c` is incomplete); anything else is free text.
* after a field: the longest operator of the field's set; after `Xref`: `.` or `=`/`!=`; after `Xref.`: a
  field of the target object; then the value (up to the next space, or a quoted string).
* free text at most once per object type; `'` and `;` nowhere.

Deliberate deviations, all on queries upstream mangles silently (each is rejected instead):
* after a value, a word that is the start of a keyword followed by more words (`name = x c web`):
  upstream silently drops `c web`; here INVALID_POST_CONDITION_VALUE_PHRASE (or INCOMPLETE at the end).
* `name ! = x`: upstream drops the `!` and reads `name = x`; here INVALID_CONDITION_RELATION.
* a partial sort direction or `page` keyword at the end (`sortby name de`): upstream ignores it; INCOMPLETE.
* `page 2 3`, `page 2x`: upstream silently reads page 1; here NOTHING_COMES_AFTER_PAGE_VALUE /
  INVALID_CHARECTER. `page 0`: upstream fails in SQL; here INVALID_PAGE_VALUE. A trailing space after the
  page number is allowed (upstream: silently page 1).
* `Datacenters:` (plural of an object without one): upstream crashes; here INVALID_SEARCH_OBJECT.
* a missing `:` after the object (`Vms`): INCOMPLETE.
* values the compiler could not use (VM dates with `today`, a string ending in `\\`, `size >= 10` read
  as `size > '='`): INVALID_CONDITION_VALUE at parse time instead of a failing query.

With `extensions=True` (used only after the strict reading failed, see parser.py) the lexer also
accepts `(`, `)` and `not(` at the start of a term; an unquoted value then also ends at a `)` that
closes a group.
"""
from __future__ import annotations

import enum
import re
from dataclasses import dataclass
from datetime import date

from .errors import SearchError
from .registry import Field, ObjectDef, Registry, XRef
from .tokens import T, Token

FORBIDDEN = "';"
MAX_QUERY_LENGTH = 10_000
FIELD_LOOKAHEAD = " !=<>"
SORT_DIRECTIONS = ("ASC", "DESC")
MAX_PAGE = 10**9
# Groups nest at most this deep: the parser, the compiler and the database's planner all recurse on the tree.
MAX_NESTING = 20
_NOT_RE = re.compile(r"not *\(", re.IGNORECASE)


class S(enum.Enum):
    """Lexer states (upstream SyntaxObjectType of the last token)."""

    BEGIN = "begin"
    OBJECT = "object"
    COLON = "colon"
    ANDOR = "andor"          # after AND / OR, and (extension) after '(' or 'not('
    VALUE = "value"          # after a complete value or free-text word (or ')')
    XREF = "xref"
    DOT = "dot"
    FIELD = "field"
    RELATION = "relation"    # after an operator: a value comes
    SORTBY = "sortby"
    SORT_FIELD = "sort_field"
    SORT_DIR = "sort_dir"
    PAGE = "page"
    DONE = "done"


@dataclass
class EndState:
    """Where a non-final scan stopped: the state and the partial word being typed (for completion)."""

    state: S
    word_start: int
    field: Field | None = None          # the field whose operator/value is being typed
    target: ObjectDef | None = None     # the object whose fields are being typed (after `Xref.`), or whose
                                        # field's value is (after `Xref.field op` / `Xref =`)
    xref: XRef | None = None            # the cross-reference the condition being typed goes through


class Lexer:
    """Tokenizes one query against a registry. `tokenize()` raises SearchError or returns the tokens.

    `final=False` is the completion mode: the last word is not committed and, instead of INCOMPLETE,
    the scan stops and records `end_state`.
    """

    def __init__(self, query: str, registry: Registry, *, extensions: bool = False, final: bool = True,
                 today: date | None = None) -> None:
        self.text = query
        self.registry = registry
        self.extensions = extensions
        self.final = final
        self.today = today
        self.tokens: list[Token] = []
        self.pos = 0
        self.state = S.BEGIN
        self.obj: ObjectDef | None = None
        self.depth = 0
        self.open_parens: list[int] = []
        self.free_text_seen: dict[str, Token] = {}
        self.end_state: EndState | None = None
        # Set while reading a condition: the field, and for `Xref = text` the cross-reference.
        self.cond_field: Field | None = None
        self.cond_xref: XRef | None = None
        # The cross-reference the current condition goes through (None for a field of the searched object).
        self.cond_via: XRef | None = None
        self.xref_plural_unmapped = False

    # ---- driver ----------------------------------------------------------------------------------
    def tokenize(self) -> list[Token]:
        if len(self.text) > MAX_QUERY_LENGTH:
            raise SearchError("QUERY_TOO_LONG", f"a query is at most {MAX_QUERY_LENGTH} characters",
                              self.text, MAX_QUERY_LENGTH, len(self.text))
        bad = next((i for i, ch in enumerate(self.text) if ch in FORBIDDEN), None)
        try:
            self._run()
        except SearchError as err:
            if bad is not None and bad <= err.detect:
                raise self._forbidden(bad) from None
            raise
        if bad is not None:
            raise self._forbidden(bad)
        return self.tokens

    def _forbidden(self, index: int) -> SearchError:
        return SearchError("INVALID_CHARECTER",
                           f"the character {self.text[index]} is not allowed anywhere in a query",
                           self.text, index, index + 1)

    def _run(self) -> None:
        handlers = {
            S.BEGIN: self._begin, S.OBJECT: self._colon, S.COLON: lambda: self._term(S.COLON),
            S.ANDOR: lambda: self._term(S.ANDOR), S.VALUE: lambda: self._term(S.VALUE),
            S.XREF: self._after_xref, S.DOT: self._xref_field, S.FIELD: self._operator,
            S.RELATION: self._value, S.SORTBY: self._sort_field, S.SORT_FIELD: self._sort_direction,
            S.SORT_DIR: self._page_keyword, S.PAGE: self._page_value,
        }
        while self.state is not S.DONE:
            handlers[self.state]()

    # ---- helpers ---------------------------------------------------------------------------------
    def _emit(self, type_: T, start: int, end: int, value: str = "", *, quoted: bool = False) -> Token:
        token = Token(type_, self.text[start:end], start, end, value, quoted)
        self.tokens.append(token)
        self.pos = end
        return token

    def _skip_spaces(self, index: int) -> int:
        while index < len(self.text) and self.text[index] == " ":
            index += 1
        return index

    def _error(self, error_class: str, message: str, start: int, end: int | None = None,
               detect: int | None = None) -> SearchError:
        end = start + 1 if end is None else end
        return SearchError(error_class, message, self.text, start, end,
                           detect=max(start, end - 1) if detect is None else detect)

    def _stop(self, state: S, word_start: int, message: str, *, field: Field | None = None,
              target: ObjectDef | None = None, xref: XRef | None = None) -> None:
        """End of input: INCOMPLETE in final mode; in completion mode remember where we are."""
        if self.final:
            n = len(self.text)
            raise SearchError("INCOMPLETE", message, self.text, min(word_start, n), n, detect=n)
        self.end_state = EndState(state, word_start, field, target, xref)
        self.state = S.DONE

    def _stop_in_value(self, word_start: int, message: str) -> None:
        """End of input while a value is typed: remember its field (None after `Xref =`) and the cross-reference
        it goes through, so completion can offer values of that field."""
        via = self.cond_via
        self._stop(S.RELATION, word_start, message, field=self.cond_field,
                   target=self.registry.target(via) if via is not None else None, xref=via)

    def _finish(self, state: S) -> None:
        if self.depth:
            opened = self.open_parens[-1]
            if self.final:
                raise SearchError("INCOMPLETE", f"close the '(' opened at {opened} with ')'",
                                  self.text, opened, opened + 1, detect=len(self.text))
        self.end_state = EndState(state, len(self.text))
        self.state = S.DONE

    @property
    def _object(self) -> ObjectDef:
        assert self.obj is not None
        return self.obj

    def _keyword_prefix(self, word: str) -> bool:
        """Upstream waits after a value while the word could still become one of these."""
        upper = word.upper()
        words = [f.upper() for f in self._object.visible_field_names()] + ["SORTBY", "AND", "OR"]
        if any(w.startswith(upper) for w in words):
            return True
        return any(s.upper().startswith(upper) or (obj_plural and (s.upper() + "S").startswith(upper))
                   for s, obj_plural in self._spellings())

    def _spellings(self) -> list[tuple[str, bool]]:
        return [(s, obj.plural) for obj in self.registry.objects.values() if obj.searchable
                for s in obj.spellings]

    def _word_end(self, start: int, stop_at_paren: bool) -> int:
        """End of an unquoted word: the next space, or (extension) a ')' that closes an open group."""
        balance = 0
        index = start
        while index < len(self.text):
            ch = self.text[index]
            if ch == " ":
                break
            if stop_at_paren:
                if ch == "(":
                    balance += 1
                elif ch == ")":
                    if balance == 0:
                        break
                    balance -= 1
            index += 1
        return index

    # ---- BEGIN / OBJECT ----------------------------------------------------------------------------
    def _walk(self, start: int, is_word, is_prefix):
        """Grow a word from `start` until it equals an expected word; upstream's per-character test.

        Returns (end, 'match') when text[start:end] is a word, (end, 'bad') at the first character that
        makes it no prefix of any expected word (end includes that character), (end, 'space') when a
        space interrupts a partial word, (len, 'end') at the end of the input.
        """
        index = start
        while index < len(self.text):
            ch = self.text[index]
            if ch == " ":
                return index, "space"
            index += 1
            word = self.text[start:index]
            if is_word(word):
                return index, "match"
            if not is_prefix(word):
                return index, "bad"
        return index, "end"

    def _begin(self) -> None:
        start = self._skip_spaces(self.pos)
        if start >= len(self.text):
            spellings = ", ".join(s for s, _ in self._spellings())
            self._stop(S.BEGIN, start, f"start with an object name and ':' (one of: {spellings})")
            return
        end, how = self._walk(start, lambda w: self.registry.match_spelling(w) is not None,
                              self.registry.is_spelling_prefix)
        if how == "end":
            self._stop(S.BEGIN, start, "finish the object name and add ':'")
            return
        if how != "match":
            bad_end = end if how == "bad" else end
            spellings = ", ".join(s for s, _ in self._spellings())
            raise self._error("INVALID_SEARCH_OBJECT",
                              f"{self.text[start:bad_end]!r} is not an object to search; "
                              f"start with one of: {spellings}", start, max(bad_end, start + 1))
        obj = self.registry.match_spelling(self.text[start:end])
        assert obj is not None
        if end < len(self.text) and self.text[end] in "sS":
            if not obj.plural:
                raise self._error("INVALID_SEARCH_OBJECT",
                                  f"{obj.name} has no plural form; write '{obj.name}:'", start, end + 1)
            end += 1
        self.obj = obj
        self._emit(T.OBJECT, start, end, obj.name)
        self.state = S.OBJECT

    def _colon(self) -> None:
        start = self._skip_spaces(self.pos)
        if start >= len(self.text):
            self._stop(S.OBJECT, start, f"add ':' after {self.tokens[-1].text}")
            return
        if self.text[start] != ":":
            raise self._error("COLON_NOT_NEXT_TO_SEARCH_OBJECT",
                              f"put ':' right after the object name {self.tokens[-1].text!r}", start)
        self._emit(T.COLON, start, start + 1, ":")
        self.state = S.COLON

    # ---- the start of a term -----------------------------------------------------------------------
    def _term(self, mode: S) -> None:
        text, n = self.text, len(self.text)
        start = self._skip_spaces(self.pos)
        if start >= n:
            if mode is S.ANDOR:
                self._stop(S.ANDOR, start, f"add a condition after {self.tokens[-1].text!r}")
            else:
                self._finish(mode)
            return
        if self.extensions and self._extension_token(mode, start):
            return
        obj = self._object
        paren_stop = self.extensions and self.depth > 0
        pending = False
        index = start
        while index < n:
            ch = text[index]
            index += 1
            word = text[start:index]
            upper = word.upper()
            if paren_stop and ch == ")" and self._closes_group(text[start:index - 1]):
                self._free_text(start, index - 1)
                return
            if ch != " " and ch != '"':
                fld = obj.field(upper)
                if mode is S.COLON:
                    if fld is not None:
                        if index < n and text[index] in FIELD_LOOKAHEAD:
                            self._start_condition(T.FIELD, start, index, fld)
                            return
                        if index >= n:
                            self._stop(S.COLON, start, f"add an operator after the field {word!r}")
                            return
                        continue
                    if upper in ("SORTBY", "PAGE"):
                        self._keyword(upper, start, index)
                        return
                elif fld is not None:
                    self._start_condition(T.FIELD, start, index, fld)
                    return
                elif mode is S.VALUE and upper in ("SORTBY", "PAGE"):
                    self._keyword(upper, start, index)
                    return
                xref = obj.xref(upper)
                if xref is not None:
                    self._cross_reference(xref, start, index)
                    return
                if mode is S.VALUE:
                    if upper in ("AND", "OR"):
                        self._emit(T.AND if upper == "AND" else T.OR, start, index, upper)
                        self.state = S.ANDOR
                        return
                    pending = self._keyword_prefix(word)
                    if pending:
                        if index >= n:
                            self._stop(S.VALUE, start, f"{word!r} is the start of a field name or "
                                       "keyword; finish it (or quote it to search for the text)")
                            return
                        continue
            # Not (or not yet) a keyword: the word is a value, committed at a space or quote.
            if ch == '"':
                if index - 1 == start:
                    self._quoted_free_text(start)
                    return
                raise self._misplaced_quote(mode, start, index)
            if ch == " ":
                if pending:
                    self._pending_word_then_more(start, index - 1)
                    return
                self._free_text(start, index - 1)
                return
            if not self._could_become_keyword(mode, upper):
                end = self._word_end(start, paren_stop)
                quote = text.find('"', start, end)
                if quote >= 0:
                    raise self._misplaced_quote(mode, start, quote + 1)
                if end >= n and not self.final:
                    self.end_state = EndState(mode, start)
                    self.state = S.DONE
                    return
                self._free_text(start, end)
                return
        # The input ended inside a word that could still become a keyword.
        if not self.final:
            self.end_state = EndState(mode, start)
            self.state = S.DONE
            return
        self._free_text(start, n)

    @staticmethod
    def _closes_group(word: str) -> bool:
        return word.count("(") <= word.count(")")

    def _could_become_keyword(self, mode: S, upper: str) -> bool:
        """Whether reading on could still produce a field/keyword (upstream tests every character)."""
        obj = self._object
        words = [f.name.upper() for f in obj.fields] + [x.name.upper() for x in obj.xrefs]
        if mode is not S.ANDOR:
            words += ["SORTBY", "PAGE"]
        if mode is S.VALUE:
            words += ["AND", "OR"]
        return any(w.startswith(upper) and w != upper for w in words)

    def _misplaced_quote(self, mode: S, start: int, end: int) -> SearchError:
        error_class = {S.COLON: "INVALID_POST_COLON_PHRASE", S.ANDOR: "INVALID_POST_OR_AND_PHRASE",
                       S.VALUE: "INVALID_POST_CONDITION_VALUE_PHRASE"}[mode]
        return self._error(error_class, 'a \'"\' may only start a value; quote the whole value, '
                           'like "my vm"', start, end, detect=end - 1)

    def _pending_word_then_more(self, start: int, word_end: int) -> None:
        """Upstream glues this word to the next one and drops both (or waits forever at the end)."""
        word = self.text[start:word_end]
        following = self._skip_spaces(word_end)
        if following >= len(self.text):
            self._stop(S.VALUE, start, f"{word!r} is the start of a field name or keyword; finish it "
                       "(or quote it to search for the text)")
            return
        after = self._word_end(following, False)
        if after >= len(self.text):
            self._stop(S.VALUE, start, f"{word!r} is the start of a field name or keyword; finish it "
                       "(or quote it to search for the text)")
            return
        raise self._error("INVALID_POST_CONDITION_VALUE_PHRASE",
                          f"{word!r} is only the start of a field name or keyword (upstream would "
                          f"silently ignore it); finish it, or quote it to search for the text",
                          start, word_end)

    def _extension_token(self, mode: S, start: int) -> bool:
        text = self.text
        ch = text[start]
        if ch == ")" and not self.depth:
            raise self._error("UNBALANCED_PARENTHESES", "this ')' closes no '('", start)
        if ch == ")":
            if mode is not S.VALUE:
                raise self._error("INVALID_POST_OR_AND_PHRASE", "a condition must come before ')'", start)
            self._emit(T.RPAREN, start, start + 1, ")")
            self.depth -= 1
            self.open_parens.pop()
            self.state = S.VALUE
            return True
        match = _NOT_RE.match(text, start)
        if ch == "(" or match:
            if match:
                self._emit(T.NOT, start, start + 3, "not")
                start = match.end() - 1
            if self.depth >= MAX_NESTING:
                raise self._error("QUERY_TOO_COMPLEX", f"groups nest at most {MAX_NESTING} deep; this '(' opens "
                                  f"group {self.depth + 1}: flatten the query", start)
            self._emit(T.LPAREN, start, start + 1, "(")
            self.depth += 1
            self.open_parens.append(start)
            self.state = S.ANDOR
            return True
        return False

    def _keyword(self, upper: str, start: int, end: int) -> None:
        if self.depth:
            raise self._error("UNBALANCED_PARENTHESES",
                              f"close the '(' opened at {self.open_parens[-1]} before {upper.lower()}",
                              start, end)
        if upper == "SORTBY":
            self._emit(T.SORTBY, start, end, "sortby")
            self.state = S.SORTBY
        else:
            self._emit(T.PAGE, start, end, "page")
            self.state = S.PAGE

    def _cross_reference(self, xref: XRef, start: int, end: int) -> None:
        self.xref_plural_unmapped = False
        if end < len(self.text) and self.text[end] in "sS":
            end += 1
            self.xref_plural_unmapped = not xref.plural
        self._emit(T.XREF, start, end, xref.name)
        self.cond_xref = xref
        self.state = S.XREF

    def _start_condition(self, type_: T, start: int, end: int, fld: Field, via: XRef | None = None) -> None:
        self._emit(type_, start, end, fld.name)
        self.cond_field = fld
        self.cond_via = via
        self.state = S.FIELD

    # ---- free text -------------------------------------------------------------------------------
    def _note_free_text(self, key: str, token: Token, what: str) -> None:
        first = self.free_text_seen.get(key)
        if first is not None:
            raise self._error("FREE_TEXT_ALLOWED_ONCE_PER_OBJ",
                              f"free text is allowed once per object: {first.text!r} and {token.text!r} "
                              f"both search {what}; quote a phrase with spaces (\"web db\") or use "
                              "field conditions", token.start, token.end)
        self.free_text_seen[key] = token

    def _free_text(self, start: int, end: int) -> None:
        value = self.text[start:end]
        if value.endswith("\\"):
            raise self._error("INVALID_CONDITION_VALUE", "a value cannot end with a backslash", start, end)
        token = Token(T.FREETEXT, value, start, end, value)
        self._note_free_text("object:" + self._object.name.upper(), token, self._object.name)
        self._emit(T.FREETEXT, start, end, value)
        self.state = S.VALUE

    def _quoted_free_text(self, start: int) -> None:
        close = self.text.find('"', start + 1)
        if close < 0:
            self._stop(S.VALUE, start, "close the quoted text with '\"'")
            return
        value = self.text[start + 1:close]
        if value.endswith("\\"):
            raise self._error("INVALID_CONDITION_VALUE", "a value cannot end with a backslash",
                              start, close + 1)
        token = Token(T.FREETEXT, self.text[start:close + 1], start, close + 1, value, True)
        self._note_free_text("object:" + self._object.name.upper(), token, self._object.name)
        self._emit(T.FREETEXT, start, close + 1, value, quoted=True)
        self.state = S.VALUE

    # ---- cross-references, operators, values --------------------------------------------------------
    def _after_xref(self) -> None:
        xref = self.cond_xref
        assert xref is not None
        start = self._skip_spaces(self.pos)
        if start >= len(self.text):
            self._stop(S.XREF, start, f"after {self.tokens[-1].text} write '.field' or '= text'")
            return
        text = self.text
        if self.xref_plural_unmapped and text[start] in ".=!":
            token = self.tokens[-1]
            raise self._error("CANT_GET_CONDITION_FIELD_AC",
                              f"{xref.name} has no plural form; write {xref.name!r}",
                              token.start, token.end, detect=start)
        if text[start] == ".":
            self._emit(T.DOT, start, start + 1, ".")
            self.state = S.DOT
            return
        if text.startswith("!=", start):
            self._emit(T.OP, start, start + 2, "!=")
        elif text[start] == "=":
            self._emit(T.OP, start, start + 1, "=")
        elif text[start] == "!" and start + 1 >= len(text):
            self._stop(S.XREF, start, "finish the operator '!='")
            return
        else:
            raise self._error("INVALID_POST_CROSS_REF_OBJ",
                              f"{self.tokens[-1].text!r} is read as the cross-reference {xref.name}; "
                              f"after it write '.field' (like {xref.name}.name = x) or '=' / '!=' and "
                              "a text", start)
        self.cond_field = None
        self.cond_via = xref
        self.state = S.RELATION

    def _xref_field(self) -> None:
        xref = self.cond_xref
        assert xref is not None
        target = self.registry.target(xref)
        start = self._skip_spaces(self.pos)
        if start >= len(self.text):
            self._stop(S.DOT, start, f"add a field of {target.name} after '.'", target=target)
            return
        visible = [f.upper() for f in target.visible_field_names()]
        end, how = self._walk(start, lambda w: target.field(w) is not None,
                              lambda w: any(f.startswith(w.upper()) for f in visible))
        if how == "match":
            fld = target.field(self.text[start:end])
            assert fld is not None
            self._start_condition(T.FIELD, start, end, fld, via=xref)
            return
        if how == "end":
            self._stop(S.DOT, start, f"finish the field name of {target.name}", target=target)
            return
        raise self._error("INVALID_CONDITION_FILED",
                          f"{self.text[start:end]!r} is not a field of {target.name}; use one of: "
                          f"{', '.join(target.visible_field_names())}", start, max(end, start + 1))

    def _operator(self) -> None:
        fld = self.cond_field
        assert fld is not None
        start = self._skip_spaces(self.pos)
        text = self.text
        if start >= len(text):
            self._stop(S.FIELD, start, f"add an operator and a value after {fld.name}", field=fld)
            return
        ops = fld.ops
        if not ops:
            token = self.tokens[-1]
            raise self._error("CONDITION_CANT_CREATE_RRELATIONS_AC",
                              f"{fld.name} cannot be used in a condition", token.start, token.end,
                              detect=start)
        two, one = text[start:start + 2], text[start]
        if two in ops:
            self._emit(T.OP, start, start + 2, two)
        elif one in ops:
            self._emit(T.OP, start, start + 1, one)
        elif any(op.startswith(one) for op in ops) and start + 1 >= len(text):
            self._stop(S.FIELD, start, f"finish the operator after {fld.name}", field=fld)
            return
        else:
            raise self._error("INVALID_CONDITION_RELATION",
                              f"{fld.name} takes the operators {' '.join(ops)}", start,
                              start + (2 if len(two) == 2 and two[1] in "=<>!" else 1))
        self.state = S.RELATION

    def _value(self) -> None:
        text, n = self.text, len(self.text)
        start = self._skip_spaces(self.pos)
        fld = self.cond_field
        if start >= n:
            self._stop_in_value(start, "add a value after the operator")
            return
        if text[start] == '"':
            close = text.find('"', start + 1)
            if close < 0:
                self._stop_in_value(start, "close the quoted value with '\"'")
                return
            value, end, quoted = text[start + 1:close], close + 1, True
        else:
            end = self._word_end(start, self.extensions and self.depth > 0)
            quote = text.find('"', start, end)
            if quote >= 0:
                raise self._error("INVALID_CONDITION_VALUE", 'a \'"\' may only start a value; quote the '
                                  'whole value, like "my vm"', start, quote + 1, detect=quote)
            if end >= n and not self.final:
                self._stop_in_value(start, "finish the value")
                return
            value, quoted = text[start:end], False
        if fld is not None:
            problem = fld.check_value(value, today=self.today)
            if problem:
                # Upstream validates when the value is complete: at its closing quote or following space.
                committed = end - 1 if quoted or end >= n else end
                raise self._error("INVALID_CONDITION_VALUE", problem, start, end, detect=committed)
        else:
            xref = self.cond_xref
            assert xref is not None
            if value.endswith("\\"):
                raise self._error("INVALID_CONDITION_VALUE", "a value cannot end with a backslash",
                                  start, end)
            token = Token(T.VALUE, text[start:end], start, end, value, quoted)
            target = self.registry.target(xref)
            self._note_free_text("xref:" + target.name.upper(), token, f"{xref.name}")
        self._emit(T.VALUE, start, end, value, quoted=quoted)
        self.state = S.VALUE

    # ---- sortby / page -----------------------------------------------------------------------------
    def _sort_field(self) -> None:
        obj = self._object
        start = self._skip_spaces(self.pos)
        if start >= len(self.text):
            self._stop(S.SORTBY, start, "add the field to sort by after sortby")
            return
        visible = [f.upper() for f in obj.visible_field_names()]
        end, how = self._walk(start, lambda w: obj.field(w) is not None,
                              lambda w: any(f.startswith(w.upper()) for f in visible))
        if how == "end":
            self._stop(S.SORTBY, start, "finish the field name to sort by")
            return
        fld = obj.field(self.text[start:end]) if how == "match" else None
        if fld is None or not fld.sortable or fld.via is not None:
            why = "has several values per row" if fld is not None else "is not a field"
            sortable = ", ".join(f.name for f in obj.fields if f.sortable and not f.via and not f.hidden)
            raise self._error("INVALID_SORT_FIELD",
                              f"cannot sort by {self.text[start:end]!r}: it {why} of {obj.name}; "
                              f"sort by one of: {sortable}", start, max(end, start + 1))
        self._emit(T.SORT_FIELD, start, end, fld.name)
        self.state = S.SORT_FIELD

    def _sort_direction(self) -> None:
        self._one_of(SORT_DIRECTIONS, T.SORT_DIR, S.SORT_DIR, S.SORT_FIELD, "INVALID_SORT_DIRECTION",
                     "after the sort field only asc or desc may follow (then page N)")

    def _page_keyword(self) -> None:
        self._one_of(("PAGE",), T.PAGE, S.PAGE, S.SORT_DIR, "INVALID_PAGE_FEILD",
                     "after the sort direction only 'page N' may follow")

    def _one_of(self, words: tuple[str, ...], type_: T, next_state: S, here: S, error_class: str,
                message: str) -> None:
        start = self._skip_spaces(self.pos)
        if start >= len(self.text):
            self._finish(here)
            return
        end, how = self._walk(start, lambda w: w.upper() in words,
                              lambda w: any(x.startswith(w.upper()) for x in words))
        if how == "match":
            self._emit(type_, start, end, self.text[start:end].lower())
            self.state = next_state
            return
        if how == "end":
            self._stop(here, start, f"finish {self.text[start:end]!r} ({' or '.join(words).lower()})")
            return
        raise self._error(error_class, message, start, max(end, start + 1))

    def _page_value(self) -> None:
        text, n = self.text, len(self.text)
        start = self._skip_spaces(self.pos)
        if start >= n:
            self._stop(S.PAGE, start, "add the page number after page")
            return
        end = start
        while end < n and text[end] in "0123456789":
            end += 1
        if end == start or (end < n and text[end] != " "):
            bad = end if end > start else start
            raise self._error("INVALID_CHARECTER", "the page number is a whole number like 2",
                              bad, bad + 1)
        if not self.final and end >= n:
            self.end_state = EndState(S.PAGE, start)
            self.state = S.DONE
            return
        number = int(text[start:end])
        if not 1 <= number <= MAX_PAGE:
            raise self._error("INVALID_PAGE_VALUE", f"pages are numbered from 1 to {MAX_PAGE}",
                              start, end)
        self._emit(T.PAGE_VALUE, start, end, str(number))
        rest = self._skip_spaces(end)
        if rest < n:
            raise self._error("NOTHING_COMES_AFTER_PAGE_VALUE", "'page N' must be the last thing in "
                              "the query; move sortby before it", rest, rest + 1)
        self.state = S.DONE
        self.end_state = EndState(S.DONE, n)
