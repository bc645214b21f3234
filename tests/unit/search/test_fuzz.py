"""Fuzzing: whatever the input, the parser returns a Query or raises its own SearchError - nothing else."""
from __future__ import annotations

from datetime import date

from hypothesis import HealthCheck, given, settings, strategies as st

from search_dsl.ast import walk
from search_dsl.errors import ERROR_CLASSES, SearchError
from search_dsl.parser import parse

from .ovirt_catalogue import OVIRT

TODAY = date(2024, 6, 12)
OBJECTS = ["Vms", "Hosts", "Templates", "Users", "Events", "Storage", "Disks", "Network", "Cluster",
           "Datacenter", "Pools", "Quota"]
WORDS = sorted({f.name for obj in OVIRT.objects.values() for f in obj.fields}
               | {x.name for obj in OVIRT.objects.values() for x in obj.xrefs}
               | {x.name + "s" for obj in OVIRT.objects.values() for x in obj.xrefs}
               | {"and", "or", "AND", "OR", "sortby", "page", "asc", "desc", "not", "up", "down", "today",
                  "true", "x*", "*", "web", "1", "0", "-5", "1.5", "01:30", "1/15/2024", "admin@internal",
                  "c", "d", "a", "orange", "namepref"})
PUNCT = ["=", "!=", "<", ">", "<=", ">=", ".", ":", '"', "(", ")", " ", "  ", "not(", "'", ";", "\\", "!"]


def check(query: str) -> None:
    try:
        parsed = parse(query, OVIRT, today=TODAY)
    except SearchError as err:
        assert err.error_class in ERROR_CLASSES
        assert 0 <= err.position <= err.end <= len(query)
        assert "^" in str(err)
        return
    for node in walk(parsed.where):
        start, end = node.span if hasattr(node, "span") else (0, 0)
        assert 0 <= start <= end <= len(query)
    if not parsed.extended:  # the extensions never change what an upstream-valid query means
        assert parse(query, OVIRT, today=TODAY, extensions=False) == parsed


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(st.text(max_size=60))
def test_random_text(text):
    check(text)


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(st.sampled_from(OBJECTS), st.text(alphabet=st.sampled_from(list("ab nmeAND=!<>.:\"()*s'")), max_size=40))
def test_object_then_random_characters(obj, text):
    check(f"{obj}: {text}")


@settings(max_examples=1500, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(st.sampled_from(OBJECTS),
       st.lists(st.one_of(st.sampled_from(WORDS), st.sampled_from(PUNCT)), max_size=14),
       st.booleans())
def test_token_soup(obj, parts, spaced):
    check(f"{obj}:" + (" ".join(parts) if spaced else "".join(parts)))


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(st.text(min_size=0, max_size=30))
def test_every_prefix_of_a_valid_query_is_handled(tail):
    query = 'Vms: name = "a b" and Hosts.cpu_usage >= 5 or (status = up web) sortby name desc page 2'
    for cut in range(len(query) + 1):
        check(query[:cut])
    check(query + tail)


def test_very_long_input_is_refused_cleanly():
    try:
        parse("Vms: " + "x" * 20000, OVIRT)
    except SearchError as err:
        assert err.error_class == "QUERY_TOO_LONG"
    else:  # pragma: no cover
        raise AssertionError("accepted a 20000-character query")
