"""Indexes for the administrator search (manager/search_fields.py), declared beside the models they index.

* Trigram GIN indexes (Postgres pg_trgm) serve `name = *x*`, `name = x*` and free text: oVirt's string
  comparisons are ILIKE with wildcards anywhere, which a b-tree cannot serve. SQLite has no GIN: there they are
  plain indexes, which the migration creates too so models and migrations stay identical.
* one trigram GIN index over a desktop's free-text columns joined (`joined_text_sql`): free text searches that
  one expression (search_fields.joined_text), so `Vms: web` is one index scan instead of an ILIKE per column per row.
* `events` severity as a number in oVirt's order (normal < warning < error < alert), so `severity >= warning`
  is an index range; the search compares exactly this expression (`severity_code`).
* names folded to lower case in code-point order (`folded`) for the search bar's value suggestions
  (manager/search_values.py): "names starting with x, in order, the first 20" is a range walk of a b-tree that
  stops after 20 entries, whatever the case typed (a trigram index must read every match of a short prefix).
bench/search.py measures what they buy.
"""
from __future__ import annotations

from typing import Any

from sqlalchemy import DDL, Index, Integer, String, event, func, literal_column
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.functions import FunctionElement

from manager.models.base import Base
from manager.models.desktops import Desktop
from manager.models.identity import User
from manager.models.ops import Event

SEVERITIES = "normal warning error alert"
"""Severities in oVirt's order; a severity's code is its position in this text (normal 1 ... alert 22)."""
SEVERITY_CODES = {name: SEVERITIES.index(name) + 1 for name in SEVERITIES.split()}
# Joins the free-text columns of a row; a unit separator, so a typed value never spans two columns.
SEPARATOR = "\x1f"
DESKTOP_TEXT_COLUMNS = ("name", "comment", "description", "ip", "guest_hostname", "logged_in_user")


def dialect_function(name: str, sql_type: Any, postgresql: str, sqlite: str, doc: str) -> Any:
    """A SQL function written one way on Postgres and another on SQLite: `postgresql` and `sqlite` are the SQL with
    `{args}` standing for the compiled arguments. Returns the class; call it with the arguments like `func.x`."""
    function = type(name, (FunctionElement,), {"type": sql_type, "name": name, "inherit_cache": True, "__doc__": doc})

    def writer(sql: str) -> Any:
        return lambda element, compiler, **kw: sql.format(args=compiler.process(element.clauses, **kw))
    compiles(function)(writer(postgresql))
    compiles(function, "sqlite")(writer(sqlite))
    return function


text_position = dialect_function(
    "text_position", Integer(), "strpos({args})", "instr({args})",
    "1-based position of `needle` in `haystack` (0 when absent): strpos on Postgres, instr on SQLite.")
folded = dialect_function(
    "folded", String(), '(lower({args}) COLLATE "C")', "lower({args})",
    """`lower(x)` compared in code-point order (COLLATE "C" on Postgres, SQLite's default BINARY), so a prefix is one
    range of it whatever the database's locale; the ix_*_folded indexes below serve exactly this.""")


def severity_code(severity: Any) -> Any:
    """An events.severity column as a number that orders like oVirt's codes (the literal stays inline: the
    index is on exactly this expression)."""
    return text_position(literal_column(f"'{SEVERITIES}'"), severity)


def joined_text_sql(columns: tuple[str, ...]) -> str:
    """`((a || <US>) || b) || ...` over a table's text columns (all NOT NULL), grouped as Postgres prints an
    index back (so Alembic sees no drift). The search compares the same expression (search_fields.joined_text)."""
    sql = columns[0]
    for name in columns[1:]:
        sql = f"(({sql} || '{SEPARATOR}') || {name})"
    return sql


def _trigram(name: str, column: Any) -> Index:
    return Index(name, column, postgresql_using="gin", postgresql_ops={column.key: "gin_trgm_ops"})


TRIGRAM_INDEXES = (
    _trigram("ix_desktops_name_trgm", Desktop.name),
    _trigram("ix_users_username_trgm", User.username),
)
Index("ix_desktops_text_trgm", literal_column(joined_text_sql(DESKTOP_TEXT_COLUMNS)).label("desktop_text"),
      postgresql_using="gin", postgresql_ops={"desktop_text": "gin_trgm_ops"}, _table=Desktop.__table__)
Index("ix_events_severity_code", severity_code(Event.severity), _table=Event.__table__)
# Page order: the search sorts by the sort key, then the primary key (stable pages); without this a page of
# `Vms:` sorts every desktop. (An explicit `sortby name asc` is oVirt's ASC NULLS FIRST; names are NOT NULL, so
# the compiler writes plain ASC there and this index serves it too.)
Index("ix_desktops_name_id", Desktop.name, Desktop.id)
# The same order within one power state (`Vms: status = up`, the commonest filter): the page walks it, and the
# search's probe of the first matches (manager/api/search.py, few_matches_statement) reads them from it alone.
Index("ix_desktops_power_state_name_id", Desktop.power_state, Desktop.name, Desktop.id)
# Value suggestions (manager/search_values.py): the tables that grow large; hosts, pools, templates and tags are
# few enough to read whole. Each index is on lower(name) in the "C" collation, which is what `folded` compares (the
# collation is given where Postgres puts an operator class: Alembic reflects index expressions without it).
C_ORDER = 'COLLATE "C"'
Index("ix_desktops_name_folded", func.lower(Desktop.name).label("name_folded"),
      postgresql_ops={"name_folded": C_ORDER})
Index("ix_users_username_folded", func.lower(User.username).label("username_folded"),
      postgresql_ops={"username_folded": C_ORDER})

# metadata.create_all on Postgres needs the operator class; Alembic's revision 0003 creates it there.
event.listen(Base.metadata, "before_create", DDL("CREATE EXTENSION IF NOT EXISTS pg_trgm").execute_if(
    dialect="postgresql"))
