"""The search registry covers our models: every column of a searched model is reachable from a field or a
cross-reference, or exempt with a reason; every other model is declared unsearched; every field can be typed
and compiles on Postgres and SQLite."""
from __future__ import annotations

import dataclasses
import uuid

import pytest
from sqlalchemy import Column, Select, Table
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.sql.expression import FromClause

from manager.models import Base
from manager.search_fields import EXEMPT, REGISTRY, UNSEARCHED_MODELS
from search_dsl import Kind, Registry, compile_query, parse
from search_dsl.compiler import column_of

SECRETS = {("hosts", "agent_token_sha256"), ("hosts", "agent_token_sealed"), ("users", "password_hash"), ("api_tokens", "token_hash")}


def _expressions(registry: Registry):
    """Every SQL expression the registry can put in a query (columns, joins, link views)."""
    for obj in registry.objects.values():
        entity = obj.entity
        if isinstance(entity, FromClause):
            yield entity
        for fld in obj.fields:
            owner = obj.relation(fld.via).entity if fld.via else entity
            yield column_of(owner, fld.column_spec)
            if fld.domain_column is not None:
                yield column_of(owner, fld.domain_column)
            for spec in fld.sort_keys or ():
                yield column_of(owner, spec)
            if fld.tags is not None:
                for spec in (fld.tags.id, fld.tags.name, fld.tags.parent):
                    yield column_of(fld.tags.entity, spec)
        for relation in obj.relations:
            yield relation.on(entity, relation.entity)
            if isinstance(relation.entity, FromClause):
                yield relation.entity
        for xref in obj.xrefs:
            yield xref.on(entity, registry.target(xref).entity)
        for spec, _ in obj.default_sort:
            yield column_of(entity, spec)
        if obj.base_filter is not None:
            yield obj.base_filter(entity)


def covered_columns(registry: Registry) -> set[tuple[str, str]]:
    """(table, column) of every model column a field reads or a join uses.

    A link view selects all its target's columns; only its link column and joins count as used (a column that
    no field reads is not searchable just because a view carries it)."""
    found: set[tuple[str, str]] = set()
    for expression in _expressions(registry):
        stack = [expression.__clause_element__() if hasattr(expression, "__clause_element__") else expression]
        while stack:
            node = stack.pop()
            if isinstance(node, Column):
                for column in node.proxy_set:
                    if isinstance(column, Column) and isinstance(column.table, Table):
                        found.add((column.table.name, column.name))
                continue
            if isinstance(node, Select) and "link_id" in node.selected_columns.keys():
                stack.append(node.selected_columns.link_id)
                stack.extend(clause for clause in (node.whereclause, *node.get_final_froms()) if clause is not None)
                continue
            stack.extend(node.get_children())
    return found


def uncovered(registry: Registry) -> list[str]:
    covered = covered_columns(registry)
    missing = []
    for model, exempt in EXEMPT.items():
        for column in model.__table__.columns:
            if (model.__tablename__, column.name) not in covered and column.name not in exempt:
                missing.append(f"{model.__name__}.{column.name}")
    return missing


def test_every_model_is_searched_or_declared_unsearched():
    models = {mapper.class_ for mapper in Base.registry.mappers}
    assert not set(EXEMPT) & set(UNSEARCHED_MODELS)
    undeclared = sorted(m.__name__ for m in models - set(EXEMPT) - set(UNSEARCHED_MODELS))
    assert undeclared == [], "declare these models in manager/search_fields.py (EXEMPT or UNSEARCHED_MODELS)"
    assert all(reason.strip() for reason in UNSEARCHED_MODELS.values())


def test_every_column_is_searchable_or_exempt_with_a_reason():
    assert uncovered(REGISTRY) == [], ("make these columns searchable in manager/search_fields.py or add them "
                                       "to EXEMPT with the reason")
    covered = covered_columns(REGISTRY)
    for model, exempt in EXEMPT.items():
        names = {c.name for c in model.__table__.columns}
        for column, reason in exempt.items():
            assert column in names, f"EXEMPT names {model.__name__}.{column}, which does not exist"
            assert reason.strip(), f"{model.__name__}.{column} needs a reason"
            assert (model.__tablename__, column) not in covered, f"{model.__name__}.{column} is exempt AND searchable"


def test_secrets_are_never_reachable():
    assert not SECRETS & covered_columns(REGISTRY)


def test_the_coverage_check_sees_a_missing_field():
    # drop `monitors` wherever desktops are declared (Vms and the link views that stand for them)
    without = [dataclasses.replace(o, fields=tuple(f for f in o.fields if f.name != "monitors"))
               for o in REGISTRY.objects.values()]
    assert uncovered(Registry(without)) == ["Desktop.monitors"]
    hosts = REGISTRY.get("Host")
    leaky = dataclasses.replace(hosts, fields=hosts.fields + (dataclasses.replace(hosts.fields[0], name="token",
                                                                                   column="agent_token_sealed"),))
    others = [o for o in REGISTRY.objects.values() if o.name != "Host"]
    assert ("hosts", "agent_token_sealed") in covered_columns(Registry([leaky, *others]))


SAMPLE = {Kind.STRING: "x*", Kind.NULLABLE_STRING: "x", Kind.RAW: "x", Kind.UUID: str(uuid.uuid4()),
          Kind.INT: "1", Kind.LONG: "1", Kind.DECIMAL: "1.5", Kind.BIT: "true", Kind.DATE: "01/15/2024",
          Kind.TIMESPAN: "01:30", Kind.SUBSTRING: "x", Kind.LIST: "x", Kind.TAG: "x*"}


def _value(fld) -> str:
    return fld.value_names()[0] if fld.kind is Kind.ENUM else SAMPLE[fld.kind]


def _typed_queries(obj):
    """(query, compile it too?) for every field, operator, sort key and cross-reference of `obj`."""
    first = obj.fields[0]
    for fld in obj.fields:
        for op in fld.ops:
            yield f"{obj.name}s: {fld.name} {op} {_value(fld)}", True
            # after and/or a field name is taken without lookahead: it must not hide another one
            yield f"{obj.name}s: {first.name} = {_value(first)} and {fld.name} {op} {_value(fld)}", False
        if fld.sortable and fld.via is None and not fld.hidden:
            yield f"{obj.name}s: sortby {fld.name} desc", True
    for xref in obj.xrefs:
        yield f"{obj.name}s: {xref.name}s = x", True
        for fld in REGISTRY.target(xref).fields:
            if fld.hidden:
                continue
            for op in fld.ops:
                yield f"{obj.name}: {xref.name}.{fld.name} {op} {_value(fld)}", True


@pytest.mark.parametrize("name", [o.name for o in REGISTRY.objects.values() if o.searchable])
def test_every_field_can_be_typed_and_compiles(name):
    for query, compiles in _typed_queries(REGISTRY.get(name)):
        parsed = parse(query, REGISTRY)
        if not compiles:
            continue
        compiled = compile_query(parsed, REGISTRY)
        for dialect in (postgresql.dialect(), sqlite.dialect()):
            assert "SELECT" in str(compiled.select.compile(dialect=dialect)), query
