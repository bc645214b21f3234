"""oVirt's administrator search language, as a pure library: query text -> tree -> SQLAlchemy statements.

    from search_dsl import Registry, parse, compile_query, complete
    compiled = compile_query("Vms: status = up and Hosts.name = h1* sortby name page 2", registry)
    rows = session.scalars(compiled.select).all(); total = session.scalar(compiled.count)

* `parse(text, registry)` -> `Query` (raises `SearchError` with the upstream error class and a caret);
* `compile_query(text_or_query, registry, page_size=100)` -> `CompiledSearch(select, count, page, ...)`;
* `complete(text, registry)` -> `Completion(start, partial, suggestions, value_of)`; `value_text(v)` writes a
  value looked up for `value_of` so that it parses;
* `registry.py`: `Registry`, `ObjectDef`, `Field`, `Kind`, `XRef`, `Relation`, `TagTree` - what callers
  declare; nothing about our own models lives in this package (it never imports `manager`).

Validity is upstream's (oVirt's SyntaxChecker; docs/search-language.md is the users' reference): the
tokenizer reproduces the upstream state machine.
Extensions - parentheses and `not(...)` - only give meaning to queries upstream rejects: a query is read
strictly first, and re-read with the extensions only if that fails (details in parser.py). Deliberate
deviations, all on queries upstream silently mangles or fails on, are listed in lexer.py.
"""
from .ast import And, Condition, FreeText, Not, Or, Query, Sort
from .compiler import CompiledSearch, compile_query, like_pattern
from .complete import Completion, ValueOf, complete, value_text
from .errors import ERROR_CLASSES, OWN_CLASSES, UPSTREAM_CLASSES, SearchError
from .parser import parse, tokenize
from .registry import Field, Kind, ObjectDef, Registry, Relation, TagTree, XRef

__all__ = [
    "And", "CompiledSearch", "Completion", "Condition", "ERROR_CLASSES", "Field", "FreeText", "Kind", "Not",
    "OWN_CLASSES", "ObjectDef", "Or", "Query", "Registry", "Relation", "SearchError", "Sort", "TagTree",
    "UPSTREAM_CLASSES", "ValueOf", "XRef", "compile_query", "complete", "like_pattern", "parse", "tokenize",
    "value_text",
]
