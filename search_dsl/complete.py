"""Next-word suggestions for a partly typed query, like oVirt's search-bar autocompletion.

The same tokenizer reads the text in completion mode (the last word is not committed), so a suggestion is
always something the parser accepts at that point: object names, then ':', fields / cross-references /
sortby / page, a cross-reference's '.' or '=' / '!=', the field's operators, its enum values, and after a
value and / or / more conditions.
"""
from __future__ import annotations

from dataclasses import dataclass

from .errors import SearchError
from .lexer import EndState, Lexer, S
from .registry import Field, ObjectDef, Registry


@dataclass(frozen=True)
class Completion:
    """Replace `text[start:]` (the `partial` word) with one of `suggestions`.

    `error` is set (and `suggestions` empty) when the text before the cursor is already invalid.
    """

    start: int
    partial: str
    suggestions: tuple[str, ...]
    error: SearchError | None = None


def complete(text: str, registry: Registry) -> Completion:
    """Suggestions for the word being typed at the end of `text`; never raises for bad input."""
    lexer = None
    error: SearchError | None = None
    for extensions in (False, True):
        candidate = Lexer(text, registry, extensions=extensions, final=False)
        try:
            candidate.tokenize()
        except SearchError as err:
            error = error or err
            continue
        lexer = candidate
        break
    if lexer is None or lexer.end_state is None:
        return Completion(len(text), "", (), error)
    end = lexer.end_state
    start = min(end.word_start, len(text))
    partial = text[start:].rstrip(" ")
    if end.word_start >= len(text) or not partial:
        start, partial = len(text), ""
    words = _candidates(end, lexer.obj, registry)
    upper = partial.upper()
    suggestions = tuple(dict.fromkeys(w for w in words if w.upper().startswith(upper)))
    return Completion(start, partial, suggestions)


def _fields(obj: ObjectDef, *, sortable: bool = False) -> list[str]:
    return [f.name for f in obj.fields
            if not f.hidden and (not sortable or (f.sortable and f.via is None))]


def _xrefs(obj: ObjectDef) -> list[str]:
    return [x.name for x in obj.xrefs]


def _operators(fld: Field | None) -> list[str]:
    return list(fld.ops) if fld is not None else ["=", "!="]


def _candidates(end: EndState, obj: ObjectDef | None, registry: Registry) -> list[str]:
    state = end.state
    if state is S.BEGIN:
        return list(registry.spellings())
    assert obj is not None
    if state is S.OBJECT:
        return [":"]
    if state is S.COLON:
        return _fields(obj) + _xrefs(obj) + ["sortby", "page"]
    if state is S.ANDOR:
        return _fields(obj) + _xrefs(obj)
    if state is S.VALUE:
        return ["and", "or"] + _fields(obj) + _xrefs(obj) + ["sortby", "page"]
    if state is S.XREF:
        return [".", "=", "!="]
    if state is S.DOT:
        return _fields(end.target) if end.target is not None else []
    if state is S.FIELD:
        return _operators(end.field)
    if state is S.RELATION:
        return list(end.field.value_names()) if end.field is not None else []
    if state is S.SORTBY:
        return _fields(obj, sortable=True)
    if state is S.SORT_FIELD:
        return ["asc", "desc"]
    if state is S.SORT_DIR:
        return ["page"]
    return []
