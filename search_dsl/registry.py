"""The types a caller uses to declare what can be searched, and how it maps onto the database.

The parser and the compiler know nothing about desktops or hosts: everything they accept comes from a
`Registry` of `ObjectDef`s handed to them. A declaration looks like this (an ORM class `Desktop` with a
`host` relationship; `Host` declared the same way):

    desktops = ObjectDef(
        name="Vm", aliases=("Desktop",), entity=Desktop, primary_key="id",
        fields=(
            Field("name", Kind.STRING),                                   # column defaults to the name
            Field("cpu_usage", Kind.INT, column="cpu_usage_percent"),
            Field("status", Kind.ENUM, values={"up": "up", "down": "down"}),
            Field("uptime", Kind.TIMESPAN, column=lambda d: d.uptime_seconds),
            Field("tag", Kind.TAG, column="name", via="tags", tags=TagTree(Tag, parent="parent_id")),
        ),
        relations=(Relation("tags", Tag, on=lambda d, t: t.id.in_(select(desktop_tags.c.tag_id)
                                                                 .where(desktop_tags.c.desktop_id == d.id))),),
        xrefs=(XRef("Host", target="Host", on=lambda d, h: h.id == d.host_id),),
        default_sort=(("name", "asc"),),
    )
    registry = Registry([desktops, hosts])

Column specs (`column`, `primary_key`, `domain_column`, `sort_keys`, `default_sort`) are either an
attribute name looked up on the entity (ORM class, aliased class, Table or alias) or a callable
`entity -> ColumnElement`. Names come only from these declarations, never from the query text.
"""
from __future__ import annotations

import enum
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field as dc_field
from datetime import date
from typing import Any

from .values import INT32, INT64, SYMBOLIC_DATES, parse_date, parse_decimal, parse_int, parse_timespan

ColumnSpec = str | Callable[[Any], Any]
"""An attribute name on the entity, or a callable taking the (possibly aliased) entity."""

JoinSpec = Callable[[Any, Any], Any]
"""`on(outer, inner) -> boolean clause` relating a row of the outer entity to rows of the inner one."""

EQ, NE, LT, GT, LE, GE = "=", "!=", "<", ">", "<=", ">="
STRING_OPS = (EQ, NE)
NUMERIC_OPS = (LT, GT, LE, GE, EQ, NE)
RANGE_OPS = (LT, GT)
DATE_OPS = (LT, GT, EQ)
NEGATIVE_OPS = frozenset({NE})


class Kind(enum.Enum):
    """How a field's values are validated and compared (docs/search-language.md section 3)."""

    STRING = "string"                    # ILIKE, * wildcard, != includes NULL
    NULLABLE_STRING = "nullable_string"  # 'null' / "" mean IS NULL; otherwise exact equality
    RAW = "raw"                          # exact, case-sensitive equality (versions, Users.type)
    UUID = "uuid"                        # exact equality; a value that is no UUID matches nothing
    INT = "int"                          # 32-bit integer
    LONG = "long"                        # 64-bit integer (sizes)
    DECIMAL = "decimal"
    ENUM = "enum"                        # a name from `values`, compared as its stored value
    BIT = "bit"                          # true / false
    DATE = "date"                        # see values.parse_date
    TIMESPAN = "timespan"                # compared in seconds
    SUBSTRING = "substring"              # always 'contains' (apps)
    LIST = "list"                        # comma-separated list column: equal to any element
    TAG = "tag"                          # tag name pattern, including descendant tags


DEFAULT_OPERATORS: dict[Kind, tuple[str, ...]] = {
    Kind.INT: NUMERIC_OPS, Kind.LONG: NUMERIC_OPS, Kind.DECIMAL: NUMERIC_OPS,
    Kind.DATE: RANGE_OPS, Kind.TIMESPAN: RANGE_OPS,
}
TEXT_KINDS = frozenset({Kind.STRING, Kind.NULLABLE_STRING, Kind.LIST, Kind.TAG})


@dataclass(frozen=True)
class TagTree:
    """Where tag names and their hierarchy live, for `Kind.TAG` fields (`tag = t` includes t's descendants)."""

    entity: Any
    id: ColumnSpec = "id"
    name: ColumnSpec = "name"
    parent: ColumnSpec = "parent_id"


@dataclass(frozen=True)
class Field:
    """One searchable field of an object.

    `column` defaults to the field name. `operators` defaults by kind (`=`/`!=`, numbers all six,
    dates and time spans `<`/`>`); an empty tuple makes the field unusable in conditions
    (CONDITION_CANT_CREATE_RRELATIONS_AC), as upstream's hidden `usrid`. `values` maps ENUM names to
    stored values. `via` names a `Relation` of the object when the column lives on a related, possibly
    multi-valued row (tags). `domain_column` makes `name@domain` compare the part after the last `@` with
    that column. `sort_keys` replaces the column when sorting (several keys allowed).
    """

    name: str
    kind: Kind = Kind.STRING
    column: ColumnSpec | None = None
    operators: tuple[str, ...] | None = None
    values: Mapping[str, Any] | None = None
    case_sensitive_values: bool = False
    hidden: bool = False
    free_text: bool | None = None
    symbolic_dates: bool = False
    via: str | None = None
    domain_column: ColumnSpec | None = None
    tags: TagTree | None = None
    sort_keys: tuple[ColumnSpec, ...] | None = None
    sortable: bool = True

    def __post_init__(self) -> None:
        if self.kind is Kind.ENUM and not self.values:
            raise ValueError(f"enum field {self.name!r} needs values")
        if self.kind is Kind.TAG and self.tags is None:
            raise ValueError(f"tag field {self.name!r} needs a TagTree")
        for op in self.ops:
            if op not in NUMERIC_OPS:
                raise ValueError(f"field {self.name!r}: unknown operator {op!r}")

    @property
    def ops(self) -> tuple[str, ...]:
        if self.operators is not None:
            return self.operators
        return DEFAULT_OPERATORS.get(self.kind, STRING_OPS)

    @property
    def column_spec(self) -> ColumnSpec:
        return self.column if self.column is not None else self.name

    @property
    def in_free_text(self) -> bool:
        return self.kind in TEXT_KINDS if self.free_text is None else self.free_text

    def value_names(self) -> tuple[str, ...]:
        """The words a value of this field can be, for completion (empty when any text goes)."""
        if self.kind is Kind.ENUM and self.values:
            return tuple(self.values)
        if self.kind is Kind.BIT:
            return ("true", "false")
        if self.kind is Kind.DATE and self.symbolic_dates:
            return SYMBOLIC_DATES
        return ()

    def enum_value(self, text: str) -> Any:
        """The stored value an ENUM name stands for; raises KeyError when it names none."""
        assert self.values is not None
        if self.case_sensitive_values:
            return self.values[text]
        folded = {name.lower(): stored for name, stored in self.values.items()}
        return folded[text.lower()]

    def check_value(self, text: str, *, today: date | None = None) -> str | None:
        """None if `text` is a valid value of this field, else a message saying what to write instead."""
        kind = self.kind
        if kind in (Kind.STRING, Kind.SUBSTRING, Kind.LIST, Kind.TAG, Kind.NULLABLE_STRING) \
                and text.endswith("\\"):
            return "a value cannot end with a backslash"
        if kind is Kind.INT and parse_int(text, INT32) is None:
            return f"{self.name} takes a whole number (like 80 or -5), not {text!r}"
        if kind is Kind.LONG and parse_int(text, INT64) is None:
            return f"{self.name} takes a whole number, not {text!r}"
        if kind is Kind.DECIMAL and parse_decimal(text) is None:
            return f"{self.name} takes a number (like 1.5), not {text!r}"
        if kind is Kind.ENUM:
            try:
                self.enum_value(text)
            except KeyError:
                names = ", ".join(self.values or ())
                case = " (case matters)" if self.case_sensitive_values else ""
                return f"{text!r} is not a valid {self.name}; use one of{case}: {names}"
        if kind is Kind.BIT and text.lower() not in ("true", "false"):
            return f"{self.name} is true or false, not {text!r}"
        if kind is Kind.DATE and parse_date(text, today=today or date.today(),
                                            symbolic=self.symbolic_dates) is None:
            extra = ", today, yesterday or a weekday name" if self.symbolic_dates else ""
            return (f"{text!r} is not a date; write it like 1/15/2024 or \"Jan 15, 2024\"{extra}"
                    " (ISO dates are not accepted)")
        if kind is Kind.TIMESPAN and parse_timespan(text) is None:
            return f"{self.name} takes days (like 2) or hh:mm (like 01:30), not {text!r}"
        return None


@dataclass(frozen=True)
class Relation:
    """A related table an object's multi-valued fields live on (e.g. the tags of a desktop)."""

    name: str
    entity: Any
    on: JoinSpec


@dataclass(frozen=True)
class XRef:
    """A cross-reference `Name.field op value` / `Name = text` from one object to related objects.

    `on(outer, inner)` relates a row of the searching object to rows of the target object; it may be a
    plain equality or a subquery (e.g. via a permissions table). `plural` allows the trailing `s`.
    """

    name: str
    target: str
    on: JoinSpec
    plural: bool = True


@dataclass(frozen=True)
class ObjectDef:
    """A searchable (or only cross-referenced) object type.

    `default_sort` is a tuple of (column spec, "asc"|"desc"). `free_text` lists field names searched by
    bare words; by default every string-like field not marked `free_text=False`. `base_filter(entity)`
    is ANDed to every query (Events: not deleted). `searchable=False` objects can only be reached as a
    cross-reference target.
    """

    name: str
    entity: Any
    fields: tuple[Field, ...]
    aliases: tuple[str, ...] = ()
    plural: bool = True
    xrefs: tuple[XRef, ...] = ()
    relations: tuple[Relation, ...] = ()
    free_text: tuple[str, ...] | None = None
    default_sort: tuple[tuple[ColumnSpec, str], ...] = ()
    primary_key: ColumnSpec = "id"
    base_filter: Callable[[Any], Any] | None = None
    searchable: bool = True
    _by_name: dict[str, Field] = dc_field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        by_name: dict[str, Field] = {}
        for fld in self.fields:
            key = fld.name.upper()
            if key in by_name:
                raise ValueError(f"{self.name}: field {fld.name!r} declared twice")
            by_name[key] = fld
            if fld.via is not None and fld.via not in {r.name for r in self.relations}:
                raise ValueError(f"{self.name}.{fld.name}: unknown relation {fld.via!r}")
        object.__setattr__(self, "_by_name", by_name)
        for name in self.free_text or ():
            if name.upper() not in by_name:
                raise ValueError(f"{self.name}: free-text field {name!r} is not a field")
        for _, direction in self.default_sort:
            if direction not in ("asc", "desc"):
                raise ValueError(f"{self.name}: sort direction must be 'asc' or 'desc'")

    def field(self, name: str) -> Field | None:
        """The field called `name` (case-insensitive), hidden ones included."""
        return self._by_name.get(name.upper())

    def visible_field_names(self) -> tuple[str, ...]:
        return tuple(f.name for f in self.fields if not f.hidden)

    def free_text_fields(self) -> tuple[Field, ...]:
        if self.free_text is not None:
            return tuple(self._by_name[n.upper()] for n in self.free_text)
        return tuple(f for f in self.fields if f.in_free_text and not f.hidden)

    def xref(self, name: str) -> XRef | None:
        upper = name.upper()
        return next((x for x in self.xrefs if x.name.upper() == upper), None)

    def relation(self, name: str) -> Relation:
        return next(r for r in self.relations if r.name == name)

    @property
    def spellings(self) -> tuple[str, ...]:
        return (self.name,) + self.aliases


class Registry:
    """The catalogue of searchable objects the lexer, parser, compiler and completer work from."""

    def __init__(self, objects: Iterable[ObjectDef]) -> None:
        self.objects: dict[str, ObjectDef] = {}
        self._spellings: dict[str, ObjectDef] = {}
        self.aliases: dict[Any, list[Any]] = {}
        """Aliases of the declared entities, made once and reused by every compiled query (compiler.alias_of)."""
        for obj in objects:
            if obj.name.upper() in self.objects:
                raise ValueError(f"object {obj.name!r} declared twice")
            self.objects[obj.name.upper()] = obj
            if obj.searchable:
                for spelling in obj.spellings:
                    if spelling.upper() in self._spellings:
                        raise ValueError(f"object name {spelling!r} used twice")
                    self._spellings[spelling.upper()] = obj
        for obj in self.objects.values():
            for xref in obj.xrefs:
                if xref.target.upper() not in self.objects:
                    raise ValueError(f"{obj.name}: cross-reference {xref.name!r} targets unknown "
                                     f"object {xref.target!r}")
        # The tokenizer takes the first spelling it sees complete, so one spelling must not hide another.
        words = sorted(self._spellings)
        for word in words:
            for other in words:
                if other != word and other.startswith(word) and other != word + "S":
                    raise ValueError(f"object name {other!r} can never be typed: {word!r} is read first")

    def get(self, name: str) -> ObjectDef:
        """The object declared as `name` (case-insensitive); KeyError when none."""
        return self.objects[name.upper()]

    def match_spelling(self, word: str) -> ObjectDef | None:
        return self._spellings.get(word.upper())

    def is_spelling_prefix(self, word: str) -> bool:
        upper = word.upper()
        return any(s.startswith(upper) for s in self._spellings)

    def spellings(self) -> tuple[str, ...]:
        """Every searchable object name, as declared (for completion)."""
        return tuple(s for obj in self.objects.values() if obj.searchable for s in obj.spellings)

    def target(self, xref: XRef) -> ObjectDef:
        return self.objects[xref.target.upper()]
