"""Next-word suggestions for a partly typed query, like oVirt's search-bar autocompletion.

The same tokenizer reads the text in completion mode (the last word is not committed), so a suggestion is
always something the parser accepts at that point: object names, then ':', fields / cross-references /
sortby / page, a cross-reference's '.' or '=' / '!=', the field's operators, its enum values, and after a
value and / or / more conditions.

Values that live in the caller's data (host names, pool names, tags) are not known here: while a value is typed,
`Completion.value_of` says for which field of which object (and through which cross-reference), and
`Completion.value_prefix` what was typed of it; the caller looks values up and writes each with `value_text`,
which quotes it when the tokenizer would otherwise not read it back whole.
"""
from __future__ import annotations

from dataclasses import dataclass

from .errors import SearchError
from .lexer import FORBIDDEN, EndState, Lexer, S
from .registry import Field, ObjectDef, Registry


# A value cannot hold these at all: `'` and `;` are refused anywhere in a query, and a quoted value ends at the
# next '"' (there is no escape).
UNWRITABLE = FORBIDDEN + '"'


@dataclass(frozen=True)
class ValueOf:
    """What the value being typed is compared with: `field` of the searched `object` (its name as declared),
    or, with `xref`, the field of the object that cross-reference reaches (`Vms: Hosts.name = ` is
    ValueOf("Vm", "name", xref="Host")). `field` is None after `Xref =`, which is free text over the target."""

    object: str
    field: str | None
    xref: str | None = None


@dataclass(frozen=True)
class Completion:
    """Replace `text[start:]` (the `partial` word) with one of `suggestions`.

    `error` is set (and `suggestions` empty) when the text before the cursor is already invalid. `value_of` is
    set while a condition's value is typed (see ValueOf).
    """

    start: int
    partial: str
    suggestions: tuple[str, ...]
    error: SearchError | None = None
    value_of: ValueOf | None = None

    @property
    def quoted(self) -> bool:
        """Whether the value being typed opened with a '"'."""
        return self.partial.startswith('"')

    @property
    def value_prefix(self) -> str:
        """What was typed of the value so far, without its opening quote."""
        return self.partial[1:] if self.quoted else self.partial


def value_text(value: str, *, quoted: bool = False) -> str | None:
    """`value` as it must be written after an operator for the tokenizer to read back exactly `value`: bare when
    it is one plain word (a value ends at a space, and inside parentheses at a ')'), else in double quotes
    (always when `quoted`: the user opened a quote). None when no query can hold it (a `'`, `;` or `"` in
    it), or when it ends with a backslash, which no string value may."""
    if any(ch in UNWRITABLE for ch in value) or value.endswith("\\"):
        return None
    if quoted or not value or any(ch in value for ch in " ()"):
        return f'"{value}"'
    return value


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
    partial = text[start:]
    if not (end.state is S.RELATION and partial.startswith('"')):  # spaces inside an open quote are the value's
        partial = partial.rstrip(" ")
    if end.word_start >= len(text) or not partial:
        start, partial = len(text), ""
    words = _candidates(end, lexer.obj, registry)
    upper = partial.upper()
    suggestions = tuple(dict.fromkeys(w for w in words if w.upper().startswith(upper)))
    return Completion(start, partial, suggestions, value_of=_value_of(end, lexer.obj))


def _value_of(end: EndState, obj: ObjectDef | None) -> ValueOf | None:
    if end.state is not S.RELATION or obj is None:
        return None
    return ValueOf(obj.name, end.field.name if end.field is not None else None,
                   end.xref.name if end.xref is not None else None)


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
