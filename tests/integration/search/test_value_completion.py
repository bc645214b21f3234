"""Value suggestions of GET /api/v1/search/complete: names from the database for the value being typed, in order,
in any case, written so that the completed query parses and finds what was suggested."""
from __future__ import annotations

import pytest

from manager.search_fields import REGISTRY
from manager.search_values import SOURCES, prefix_end


@pytest.mark.parametrize("text, expected", [
    ("Vms: Hosts.name = v", ["vs-a"]),
    ("Vms: on_host = ", ["fake1", "gonzo.example.com", "host1", "vs-a"]),
    ("Vms: on_host = H", ["host1"]),                                   # any case
    ("Vms: pool = E", ["eng-pool"]),
    ("Vms: Hosts = h", ["host1"]),                                     # free text over the host
    ("Vms: name = m", ['"my vm"']),                                    # a space: quoted
    ('Vms: name = "my', ['"my vm"']),                                  # the user's open quote
    ("Vms: name = 5", ["50%"]),
    ("Vms: name = web", ["web1", "web2"]),
    ("Vms: Templates.name = w", ["WinXP-office"]),
    ("Vms: tag = PA", ["paris-loc"]),
    ("Vms: name = t* and pool = f", ["fin-pool"]),
    ("Hosts: name = g", ["gonzo.example.com"]),
    ("Hosts: cluster = e", ["eu-west"]),
    ("Pools: name = f", ["fin-pool"]),
    ("Pools: template = r", ["rhel9"]),
    ("Templates: name = b", ["Blank"]),
    ("Users: usrname = john", ['"john smith@internal"', "john.smith@corp"]),
    ("Users: usrname = mary@i", ["mary@internal"]),
    ("Users: tag = t", ["tag1"]),
    ("Users: Vms.name = d", ["db1"]),
    ("Events: event_host = gon", ["gonzo.example.com"]),
    ("Groups: name = f", ["finance"]),
    ("Storage: name = i", ["iscsi-store"]),
])
def test_values_start_with_what_was_typed(api, text, expected):
    body = api.get("/api/v1/search/complete", params={"q": text}).json()
    assert body["suggestions"] == expected
    for suggestion in expected:
        query = text[:body["start"]] + suggestion
        found = api.get("/api/v1/search", params={"q": query})
        assert found.status_code == 200, (query, found.text)
        assert found.json()["total"] >= 1, query


@pytest.mark.parametrize("text", [
    "Vms: name = web*",         # a pattern, not a name
    "Vms: name = zzz",          # nothing starts with it
    "Vms: cpu_usage > 5",       # numbers have no list
    "Vms: description = f",     # free-form text is not listed
    "Events: usrname = a",
])
def test_no_values_where_none_fit(api, text):
    assert api.get("/api/v1/search/complete", params={"q": text}).json()["suggestions"] == []


def test_every_tag_is_suggested_tagged_or_not(api):
    body = api.get("/api/v1/search/complete", params={"q": "Hosts: tag = "}).json()
    assert body["suggestions"] == ["dev", "foo", "paris-loc", "prod", "prod-eu", "prod-eu-west", "tag1"]


def test_enum_values_stay_and_names_do_not_mix_in(api):
    assert api.get("/api/v1/search/complete", params={"q": "Vms: status = u"}).json()["suggestions"] == \
        ["Unassigned", "Up", "Unknown"]


def test_every_source_is_a_visible_field_and_cross_references_are_named_after_their_object():
    for (obj, field), _source in SOURCES.items():
        declared = REGISTRY.get(obj)
        assert declared.searchable, obj
        if field is not None:
            assert declared.field(field) is not None and not declared.field(field).hidden, (obj, field)
    # completion reports a cross-reference's name; SOURCES reads it as the object the cross-reference reaches
    for declared in REGISTRY.objects.values():
        if declared.searchable:
            for xref in declared.xrefs:
                assert REGISTRY.target(xref).fields == REGISTRY.get(xref.name).fields, (declared.name, xref.name)


def test_prefix_end_bounds_every_string_with_the_prefix():
    assert prefix_end("desk-04") == "desk-05"
    assert prefix_end("a\U0010ffff") == "b"
    assert prefix_end("\ud7ff") == "\ue000"
    assert prefix_end("") is None and prefix_end("\U0010ffff") is None
