"""Compile a parsed query and a registry into SQLAlchemy 2 statements (rows of one page, and a count).

Everything is filtered in SQL, every value is a bound parameter, and every table or column comes from the
registry's declarations - never from the query text.

Row semantics (docs/search-language.md section 6). Upstream joins every related table with LEFT OUTER JOIN and
keeps an entity when *some* combination of related rows (or a NULL row when there is none) satisfies the
whole expression. This compiler gives the same answers with correlated EXISTS subqueries instead of one
big join plus DISTINCT:

* a relation is a cross-reference (`Hosts.`, `Users = x`) or a multi-valued field's table (tags); nested
  ones (`Users.tag`) hang under their parent;
* the existential distributes over OR, and AND-ed terms that mention no common relation are independent,
  so each maximal AND-group of terms sharing a relation becomes ONE `EXISTS (SELECT 1 FROM <seed>
  LEFT JOIN <related> ON <join> ... WHERE <terms>)`: the terms must hold for the same related row
  (`Hosts: Vms.name = web* and Vms.status = up` needs one VM with both), and the one-row seed with a LEFT
  JOIN supplies upstream's NULL row when there is no related row (`Vms: Hosts.name != h1` also matches
  VMs that are not running);
* when the terms are provably false on a NULL row (a three-valued evaluation of the group), the seed is
  dropped and the relation joined plainly: `EXISTS (SELECT 1 FROM hosts AS h WHERE h.id = vms.host_id
  AND h.name ILIKE :p)`.
`not(...)` (extension) is the complement at the entity level: `NOT ((...) IS TRUE)`, so a NULL inside
never makes both a query and its negation miss a row. Relations inside `not(...)` are quantified inside.

Value semantics (docs/search-language.md section 3): strings ILIKE with `*` -> `%` and `_`, `%`, `\\` escaped (ESCAPE
'\\'); `!=` adds `IS NULL OR`; `""` is the empty string, not NULL; enums compare stored values; dates
become local midnight (`=` is a one-day BETWEEN); uptime compares seconds; `apps` is a substring match;
`usrname = u@d` splits at the last `@`; comma lists match any element (case-insensitive, no wildcard);
tags match the tag and its descendants (recursive CTE); free text ORs "contains" over the free-text
columns (cross-ref `!=` ORs NOT ILIKE, as upstream).
"""
from __future__ import annotations

import itertools
import uuid
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta, tzinfo
from typing import Any

from sqlalchemy import (
    Boolean, Column, Date, DateTime, Select, String, Table, Uuid, and_, false, func, literal, literal_column, not_,
    or_, select, true,
)
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.orm import aliased
from sqlalchemy.sql import visitors
from sqlalchemy.sql.expression import ColumnElement, FromClause
from sqlalchemy.sql.visitors import InternalTraversal

from core.errors import Invalid

from .ast import And, Condition, FreeText, Node, Not, Or, Query
from .parser import parse
from .registry import (
    EQ, GE, GT, LE, LT, NE, ColumnSpec, Field, Kind, ObjectDef, Registry,
)
from .values import INT32, INT64, parse_date, parse_decimal, parse_int, parse_timespan

DEFAULT_PAGE_SIZE = 100
MAX_PAGE_SIZE = 10_000
Key = tuple[str, ...]
"""A relation path from the searched object: ('X:Host',), ('X:User', 'R:tags'), ('R:tags',)."""


@dataclass(frozen=True)
class CompiledSearch:
    """The statements for one page of a search, and how the page was cut."""

    query: Query
    select: Select     # the page's rows (entities of the searched object), ordered
    count: Select      # the total number of matching entities
    page: int
    page_size: int
    offset: int


def compile_query(query: Query | str, registry: Registry, *, page_size: int = DEFAULT_PAGE_SIZE,
                  case_sensitive: bool = False, today: date | None = None, tz: tzinfo | None = None,
                  extensions: bool = True) -> CompiledSearch:
    """Compile `query` (text or an already parsed Query) against `registry`.

    `page_size` is the rows per page (UI/REST `max`, default 100); the query's `page N` picks the page.
    `case_sensitive` switches ILIKE to LIKE. `today`/`tz` fix the calendar for date values (default: the
    local date; naive local-midnight datetimes unless `tz` is given). Raises SearchError for a bad query
    and core.errors.Invalid for a bad page size.
    """
    if not 1 <= page_size <= MAX_PAGE_SIZE:
        raise Invalid(f"page size must be between 1 and {MAX_PAGE_SIZE}, not {page_size}")
    today = today or date.today()
    if isinstance(query, str):
        query = parse(query, registry, extensions=extensions, today=today)
    compiler = _Compiler(registry, registry.get(query.object), case_sensitive, today, tz)
    return compiler.compile(query, page_size)


def like_pattern(value: str) -> str:
    """The (I)LIKE pattern for a search value: literal \\ % _, and * for any run of characters."""
    escaped = value.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return escaped.replace("*", "%")


def column_of(entity: Any, spec: ColumnSpec) -> Any:
    """A column of a (possibly aliased) entity, by declared attribute name or callable."""
    if callable(spec):
        return spec(entity)
    if isinstance(entity, FromClause):
        return entity.c[spec]
    return getattr(entity, spec)


def alias_of(entity: Any, registry: Registry | None = None, nth: int = 0) -> Any:
    """An anonymous alias of `entity`; with a registry, its `nth` alias, made once and then reused.

    Building an alias's column collection costs more than the rest of compiling a query, so the compiler
    reuses them. One alias may appear in several subqueries of a statement, even nested ones: each EXISTS
    selects FROM its own aliases (SQL resolves a name to the innermost FROM) and correlates only to the
    scope it is handed; `nth` keeps two relations to the same entity in one FROM apart.
    """
    if registry is None:
        return entity.alias() if isinstance(entity, FromClause) else aliased(entity)
    made = registry.aliases.setdefault(entity, [])
    while len(made) <= nth:
        made.append(alias_of(entity))
    return made[nth]


def _never_null(col: Any) -> bool:
    """Whether `col` is a table column declared NOT NULL (then NULLS FIRST/LAST cannot change an order)."""
    col = getattr(col, "expression", col)  # an ORM attribute's column
    return isinstance(col, Column) and isinstance(col.table, Table) and not col.nullable


def _same_spec(a: ColumnSpec, b: ColumnSpec) -> bool:
    return a == b if isinstance(a, str) and isinstance(b, str) else a is b


class _Compiler:
    def __init__(self, registry: Registry, obj: ObjectDef, case_sensitive: bool, today: date,
                 tz: tzinfo | None) -> None:
        self.registry = registry
        self.obj = obj
        self.case_sensitive = case_sensitive
        self.today = today
        self.tz = tz
        self.names = itertools.count(1)

    # ---- statement -----------------------------------------------------------------------------------
    def compile(self, query: Query, page_size: int) -> CompiledSearch:
        main = self.obj.entity
        conditions = []
        if query.where is not None:
            conditions.append(self._quantify(query.where, {(): main}))
        if self.obj.base_filter is not None:
            conditions.append(self.obj.base_filter(main))
        page = query.page or 1
        offset = (page - 1) * page_size
        rows = select(main).where(*conditions).order_by(*self._order(query)).offset(offset).limit(page_size)
        # The same filter: the two are separate statements, so each renders its own WITH for a tag CTE.
        count = select(func.count()).select_from(main).where(*conditions)
        return CompiledSearch(query, rows, count, page, page_size, offset)

    def _order(self, query: Query) -> list[Any]:
        main = self.obj.entity
        clauses: list[Any] = []
        used: list[ColumnSpec] = []
        if query.sort is not None:
            fld = self.obj.field(query.sort.field)
            assert fld is not None
            for spec in fld.sort_keys or (fld.column_spec,):
                col = column_of(main, spec)
                if _never_null(col):  # the same order; an index on the plain column serves it
                    clauses.append(col.desc() if query.sort.descending else col.asc())
                else:
                    clauses.append(col.desc().nulls_last() if query.sort.descending else col.asc().nulls_first())
                used.append(spec)
        for spec, direction in self.obj.default_sort:
            if not any(_same_spec(spec, u) for u in used):
                col = column_of(main, spec)
                clauses.append(col.desc() if direction == "desc" else col.asc())
                used.append(spec)
        if not any(_same_spec(self.obj.primary_key, u) for u in used):
            clauses.append(column_of(main, self.obj.primary_key).asc())  # stable pages
        return clauses

    # ---- relations ---------------------------------------------------------------------------------
    def _owner(self, key: Key) -> ObjectDef:
        """The object whose fields live at `key` (a relation element keeps its parent's object)."""
        owner = self.obj
        for element in key:
            if element.startswith("X:"):
                xref = owner.xref(element[2:])
                assert xref is not None
                owner = self.registry.target(xref)
        return owner

    def _entity_and_join(self, key: Key) -> tuple[Any, Any]:
        parent = self._owner(key[:-1])
        element = key[-1]
        if element.startswith("X:"):
            xref = parent.xref(element[2:])
            assert xref is not None
            return self.registry.target(xref).entity, xref.on
        relation = parent.relation(element[2:])
        return relation.entity, relation.on

    def _base_key(self, xref: str | None) -> Key:
        return (f"X:{xref}",) if xref else ()

    def _field_key(self, base: Key, fld: Field) -> Key:
        return base + (f"R:{fld.via}",) if fld.via else base

    def _free_text_fields(self, owner: ObjectDef) -> list[Field]:
        seen: list[tuple[str | None, ColumnSpec]] = []
        fields = []
        for fld in owner.free_text_fields():
            if any(via == fld.via and _same_spec(spec, fld.column_spec) for via, spec in seen):
                continue
            seen.append((fld.via, fld.column_spec))
            fields.append(fld)
        return fields

    def _atom_keys(self, atom: Condition | FreeText) -> set[Key]:
        """Every relation an atom reads (ancestors included)."""
        base = self._base_key(atom.xref)
        owner = self._owner(base)
        keys = {base} if base else set()
        if isinstance(atom, Condition):
            fld = owner.field(atom.field)
            assert fld is not None
            keys.add(self._field_key(base, fld))
        else:
            keys.update(self._field_key(base, f) for f in self._free_text_fields(owner))
        keys.discard(())
        return keys

    def _keys(self, node: Node) -> set[Key]:
        if isinstance(node, (Condition, FreeText)):
            return self._atom_keys(node)
        if isinstance(node, (And, Or)):
            return self._keys(node.left) | self._keys(node.right)
        return set()  # Not: quantified inside

    # ---- quantification ---------------------------------------------------------------------------
    def _quantify(self, node: Node, env: dict[Key, Any]) -> ColumnElement[bool]:
        """SQL for: some choice of rows for the relations `node` reads beyond `env` satisfies it."""
        if isinstance(node, Or):
            return or_(self._quantify(node.left, env), self._quantify(node.right, env))
        if isinstance(node, Not):
            inner = self._quantify(node.operand, {(): self.obj.entity})
            return not_(inner.is_(true()))
        if isinstance(node, And):
            parts = []
            for group, keys in self._groups(_conjuncts(node), env):
                if not keys:
                    parts.extend(self._bound(child, env) for child in group)
                elif len(group) == 1 and isinstance(group[0], Or):
                    parts.append(self._quantify(group[0], env))
                else:
                    parts.append(self._exists(group, keys, env))
            return and_(*parts)
        keys = self._atom_keys(node) - set(env)
        if not keys:
            return self._atom(node, env)
        return self._exists([node], keys, env)

    def _groups(self, children: list[Node], env: dict[Key, Any]) -> list[tuple[list[Node], set[Key]]]:
        """Partition AND-ed children: those reading a common unbound relation must share its row."""
        groups: list[tuple[list[Node], set[Key]]] = []
        for child in children:
            keys = self._keys(child) - set(env)
            roots = {_root(k, env) for k in keys}
            merged_children, merged_keys = [child], set(keys)
            remaining = []
            for other_children, other_keys in groups:
                other_roots = {_root(k, env) for k in other_keys}
                if roots & other_roots:
                    merged_children = other_children + merged_children
                    merged_keys |= other_keys
                else:
                    remaining.append((other_children, other_keys))
            groups = remaining + [(merged_children, merged_keys)]
        return groups

    def _bound(self, node: Node, env: dict[Key, Any]) -> ColumnElement[bool]:
        """SQL for `node` when every relation it reads is already bound in `env`."""
        if isinstance(node, And):
            return and_(self._bound(node.left, env), self._bound(node.right, env))
        if isinstance(node, Or):
            return or_(self._bound(node.left, env), self._bound(node.right, env))
        if isinstance(node, Not):
            return self._quantify(node, env)
        return self._atom(node, env)

    def _exists(self, group: list[Node], keys: set[Key], env: dict[Key, Any]) -> ColumnElement[bool]:
        new = sorted({k[:i] for k in keys for i in range(1, len(k) + 1)} - set(env), key=len)
        scope = dict(env)
        joins = []
        uses: dict[Any, int] = {}
        for key in new:
            entity, on = self._entity_and_join(key)
            nth = uses.get(entity, 0)
            uses[entity] = nth + 1
            scope[key] = alias_of(entity, self.registry, nth)
            joins.append((key, _correlated(on(scope[key[:-1]], scope[key]), scope[key[:-1]], scope[key])))
        body = and_(*(self._bound(child, scope) for child in group))
        plain = {key for key in new
                 if _truth(self, group, {k for k in new if k[: len(key)] == key}) is False}
        own_froms = [scope[k] for k in new]
        if len(plain) == len(new):
            sub = select(literal_column("1")).select_from(*own_froms).where(*(on for _, on in joins), body)
        else:
            seed = select(literal_column("1").label("one")).subquery(f"search_seed_{next(self.names)}")
            joined = seed
            for key, on in joins:
                joined = joined.join(scope[key], on) if key in plain else joined.outerjoin(scope[key], on)
            own_froms.append(seed)
            sub = select(literal_column("1")).select_from(joined).where(body)
        return sub.correlate_except(*own_froms).exists()

    # ---- atoms ---------------------------------------------------------------------------------------
    def _atom(self, atom: Condition | FreeText, env: dict[Key, Any]) -> ColumnElement[bool]:
        base = self._base_key(atom.xref)
        owner = self._owner(base)
        if isinstance(atom, FreeText):
            return self._free_text(atom, owner, base, env)
        fld = owner.field(atom.field)
        assert fld is not None
        entity = env[self._field_key(base, fld)]
        return self._condition(fld, atom.op, atom.value, entity)

    def _like(self, col: Any, pattern: str) -> ColumnElement[bool]:
        if self.case_sensitive:
            return col.like(pattern, escape="\\")
        return col.ilike(pattern, escape="\\")

    def _free_text(self, atom: FreeText, owner: ObjectDef, base: Key, env: dict[Key, Any]) -> Any:
        pattern = f"%{like_pattern(atom.value)}%"
        cols = [column_of(env[self._field_key(base, f)], f.column_spec) for f in self._free_text_fields(owner)]
        if not cols:
            return false()
        if atom.op == NE:  # upstream ORs the negations: "some column does not contain v"
            return or_(*(not_(self._like(col, pattern)) for col in cols))
        return or_(*(self._like(col, pattern) for col in cols))

    def _condition(self, fld: Field, op: str, value: str, entity: Any) -> ColumnElement[bool]:
        col = column_of(entity, fld.column_spec)
        kind = fld.kind
        if kind is Kind.STRING and fld.domain_column is not None and "@" in value:
            user, _, domain = value.rpartition("@")
            domain_col = column_of(entity, fld.domain_column)
            return and_(self._string(col, op, like_pattern(user)), self._string(domain_col, op,
                                                                                 like_pattern(domain)))
        if kind is Kind.STRING:
            return self._string(col, op, like_pattern(value))
        if kind is Kind.SUBSTRING:
            return self._string(col, op, f"%{like_pattern(value)}%")
        if kind is Kind.NULLABLE_STRING:
            if value == "" or value.lower() == "null":
                return col.is_(None) if op == EQ else col.is_not(None)
            return _compare(col, op, value)
        if kind is Kind.RAW:
            return _compare(col, op, value)
        if kind is Kind.UUID:
            try:
                parsed = uuid.UUID(value)
            except ValueError:  # no row has an id that is not a UUID
                return false() if op == EQ else true()
            return _compare(col, op, parsed if isinstance(col.type, Uuid) else str(parsed))
        if kind in (Kind.INT, Kind.LONG):
            number = parse_int(value, INT32 if kind is Kind.INT else INT64)
            return _compare(col, op, number)
        if kind is Kind.DECIMAL:
            return _compare(col, op, parse_decimal(value))
        if kind is Kind.ENUM:
            return _compare(col, op, fld.enum_value(value))
        if kind is Kind.BIT:
            return _compare(col, op, value.lower() == "true")
        if kind is Kind.TIMESPAN:
            return _compare(col, op, parse_timespan(value))
        if kind is Kind.DATE:
            return self._date(col, op, value, fld)
        if kind is Kind.LIST:
            return self._list(col, op, value)
        if kind is Kind.TAG:
            return self._tag(col, op, value, fld)
        raise AssertionError(f"unhandled kind {kind}")  # pragma: no cover

    def _string(self, col: Any, op: str, pattern: str) -> ColumnElement[bool]:
        if op == EQ:
            return self._like(col, pattern)
        return or_(col.is_(None), not_(self._like(col, pattern)))

    def _date(self, col: Any, op: str, value: str, fld: Field) -> ColumnElement[bool]:
        day = parse_date(value, today=self.today, symbolic=fld.symbolic_dates)
        assert day is not None
        if isinstance(col.type, Date) and not isinstance(col.type, DateTime):
            start: Any = day
            return col == day if op == EQ else _compare(col, op, start)
        start = datetime.combine(day, time.min, tzinfo=self.tz)
        if op == EQ:
            return col.between(start, start + timedelta(days=1))
        return _compare(col, op, start)

    def _list(self, col: Any, op: str, value: str) -> ColumnElement[bool]:
        """Equality with any element of a comma-separated list (portable form of ILIKE ANY(...))."""
        padded = literal(",", String) + col + literal(",", String)
        # The value is a literal element here: * is no wildcard (upstream puts it left of ILIKE).
        pattern = "%," + value.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + ",%"
        if self.case_sensitive:
            match = padded.like(pattern, escape="\\")
        else:
            match = func.lower(padded).like(pattern.lower(), escape="\\")
        if op == EQ:
            return match
        return and_(col.is_not(None), not_(match))

    def _tag(self, col: Any, op: str, value: str, fld: Field) -> ColumnElement[bool]:
        if op == NE:  # no hierarchy for !=, as upstream
            return self._string(col, op, like_pattern(value))
        tree = fld.tags
        assert tree is not None
        pattern = value.replace("\\", "")
        tags = alias_of(tree.entity, self.registry)
        name = column_of(tags, tree.name)
        matches = name.like(like_pattern(pattern), escape="\\") if "*" in pattern else name == pattern
        found = select(column_of(tags, tree.id).label("id"), name.label("name")).where(matches) \
            .cte(f"search_tags_{next(self.names)}", recursive=True)
        children = alias_of(tree.entity, self.registry, 1)
        found = found.union(select(column_of(children, tree.id), column_of(children, tree.name))
                            .where(column_of(children, tree.parent) == found.c.id))
        return InSelect(col, select(found.c.name))


class InSelect(ColumnElement):
    """`key IN (SELECT ...)` for an uncorrelated subquery; on Postgres `key = ANY(ARRAY(SELECT ...))`.

    The array is computed once (an InitPlan) and `= ANY(array)` is an index condition, so several of these
    OR-ed with trigram conditions (free text) become one BitmapOr instead of a sequential scan. Its planner
    estimate is a few elements, not the subquery's guess (a recursive CTE of tags is guessed at 171 rows).
    """

    type = Boolean()
    inherit_cache = False
    _is_implicitly_boolean = True
    _traverse_internals = [("key", InternalTraversal.dp_clauseelement),
                           ("select", InternalTraversal.dp_clauseelement)]

    def __init__(self, key: Any, select_: Any) -> None:
        self.key = key
        self.select = select_.scalar_subquery()


@compiles(InSelect)
def _in_select(element: InSelect, compiler: Any, **kw: Any) -> str:
    return f"{compiler.process(element.key, **kw)} IN {compiler.process(element.select, **kw)}"


@compiles(InSelect, "postgresql")
def _in_select_pg(element: InSelect, compiler: Any, **kw: Any) -> str:
    return f"{compiler.process(element.key, **kw)} = ANY(ARRAY{compiler.process(element.select, **kw)})"


def _correlated(clause: Any, *froms: Any) -> Any:
    """Make SELECTs inside a join clause correlate to the joined entities.

    SQLAlchemy auto-correlates a subquery only to the SELECT right around it; a join written as
    `tag.id.in_(select(vm_tags.c.tag_id).where(vm_tags.c.vm_id == vm.id))` sits inside our EXISTS, two
    levels below `vm`, and would otherwise get its own uncorrelated `FROM vms`.
    """
    def replace(element: Any, **_: Any) -> Any:
        if isinstance(element, Select):
            return element.correlate(*froms)
        return None
    return visitors.replacement_traverse(clause, {}, replace)


def _compare(col: Any, op: str, value: Any) -> ColumnElement[bool]:
    if op == EQ:
        return col == value
    if op == NE:
        return or_(col.is_(None), col != value)
    return {LT: col < value, GT: col > value, LE: col <= value, GE: col >= value}[op]


def _conjuncts(node: Node) -> list[Node]:
    if isinstance(node, And):
        return _conjuncts(node.left) + _conjuncts(node.right)
    return [node]


def _root(key: Key, env: dict[Key, Any]) -> Key:
    """The outermost unbound relation on `key`'s path."""
    for i in range(1, len(key) + 1):
        if key[:i] not in env:
            return key[:i]
    return key


# ---- three-valued evaluation on NULL rows --------------------------------------------------------------
def _truth(compiler: _Compiler, nodes: list[Node], nulls: set[Key]) -> bool | None:
    """Whether the AND of `nodes` is certainly true/false when the relations in `nulls` are NULL rows."""
    return _and3([_node_truth(compiler, node, nulls) for node in nodes])


def _and3(values: list[bool | None]) -> bool | None:
    if any(v is False for v in values):
        return False
    return True if all(v is True for v in values) else None


def _or3(values: list[bool | None]) -> bool | None:
    if any(v is True for v in values):
        return True
    return False if all(v is False for v in values) else None


def _node_truth(compiler: _Compiler, node: Node, nulls: set[Key]) -> bool | None:
    if isinstance(node, And):
        return _and3([_node_truth(compiler, node.left, nulls), _node_truth(compiler, node.right, nulls)])
    if isinstance(node, Or):
        return _or3([_node_truth(compiler, node.left, nulls), _node_truth(compiler, node.right, nulls)])
    if isinstance(node, Not):
        return None
    base = compiler._base_key(node.xref)
    owner = compiler._owner(base)
    if isinstance(node, FreeText):
        keys = {compiler._field_key(base, f) for f in compiler._free_text_fields(owner)}
        return False if keys and keys <= nulls else None
    fld = owner.field(node.field)
    assert fld is not None
    if compiler._field_key(base, fld) not in nulls:
        return None
    return _on_null_row(fld, node.op, node.value)


def _on_null_row(fld: Field, op: str, value: str) -> bool:
    """The compiled predicate's value when its column is NULL (negations include NULL, as upstream)."""
    if fld.kind is Kind.LIST:
        return False
    if fld.kind is Kind.NULLABLE_STRING and (value == "" or value.lower() == "null"):
        return op == EQ
    return op == NE
