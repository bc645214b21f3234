"""Tokenizer rules that decide validity, precedence, the extensions, and how errors are shown."""
from __future__ import annotations

from datetime import date

import pytest

from search_dsl.errors import SearchError
from search_dsl.parser import parse, tokenize
from search_dsl.tokens import T

from .ovirt_catalogue import OVIRT

TODAY = date(2024, 6, 12)


def where(query, **kw):
    return parse(query, OVIRT, today=TODAY, **kw).normal()["where"]


def error(query, **kw) -> SearchError:
    with pytest.raises(SearchError) as info:
        parse(query, OVIRT, today=TODAY, **kw)
    return info.value


def n(field, value, op="="):
    return (op, field, value)


@pytest.mark.parametrize("query, error_class, at", [
    # object names: case-insensitive, one plural s, then only ':'
    ("Vmss: name = x", "COLON_NOT_NEXT_TO_SEARCH_OBJECT", 3),
    ("Datacenters: name = x", "INVALID_SEARCH_OBJECT", 0),
    ("Xyz: name = x", "INVALID_SEARCH_OBJECT", 0),
    ("Ho st: name = x", "INVALID_SEARCH_OBJECT", 0),
    # a field after ':' needs a following space or operator; elsewhere it is taken at once
    ("Vms: status = up and names = x", "INVALID_CONDITION_RELATION", 25),
    ("Vms: name = x namepref", "INVALID_CONDITION_RELATION", 18),
    # cross-reference names are taken with no lookahead
    ("Vms: hostname = x", "INVALID_POST_CROSS_REF_OBJ", 9),
    ("Vms: Hosts.namex = 1", "INVALID_CONDITION_RELATION", 15),
    # free text once per object
    ("Vms: web db", "FREE_TEXT_ALLOWED_ONCE_PER_OBJ", 9),
    ("Vms: a or b", "FREE_TEXT_ALLOWED_ONCE_PER_OBJ", 10),
    ("Vms: Hosts = h1 and Hosts = h2", "FREE_TEXT_ALLOWED_ONCE_PER_OBJ", 28),
    # quotes only start a value
    ('Vms: name = a"b', "INVALID_CONDITION_VALUE", 12),
    ('Vms: ab"c', "INVALID_POST_COLON_PHRASE", 5),
    ('Vms: x and ab"c', "INVALID_POST_OR_AND_PHRASE", 11),
    ('Vms: name = x wb"c', "INVALID_POST_CONDITION_VALUE_PHRASE", 14),
    # forbidden characters win over anything after them, not over an earlier error
    ("Vms: name = x;", "INVALID_CHARECTER", 13),
    ('Vms: "it\'s"', "INVALID_CHARECTER", 8),
    ("Vms: status = running;", "INVALID_CHARECTER", 21),    # seen before the value is complete
    ("Vms: status = running ;", "INVALID_CONDITION_VALUE", 14),
    # operators: per field type, longest one only if the field has it
    ("Vms: uptime >= 5", "INVALID_CONDITION_VALUE", 13),
    ("Disks: size >= 10", "INVALID_CONDITION_VALUE", 13),
    ("Hosts: migrating_vms > 1", "INVALID_CONDITION_RELATION", 21),
    ("Vms: status < up", "INVALID_CONDITION_RELATION", 12),
    ("Events: usrid = 5", "CONDITION_CANT_CREATE_RRELATIONS_AC", 8),
    ("Vms: Hosts > x", "INVALID_POST_CROSS_REF_OBJ", 11),
    ("Vms: user.username = x", "INVALID_CONDITION_FILED", 10),
    # values per field type
    ("Vms: cpu_usage = 5.5", "INVALID_CONDITION_VALUE", 17),
    ("Vms: cpu_usage = 99999999999", "INVALID_CONDITION_VALUE", 17),
    ("Vms: os = RHEL_7x64", "INVALID_CONDITION_VALUE", 10),
    ("Vms: has_illegal_images = yes", "INVALID_CONDITION_VALUE", 26),
    ("Events: time > 2024-01-15", "INVALID_CONDITION_VALUE", 15),
    ("Vms: uptime > 1:30", "INVALID_CONDITION_VALUE", 14),
    ("Vms: status = up*", "INVALID_CONDITION_VALUE", 14),
    ("Vms: name = x\\", "INVALID_CONDITION_VALUE", 12),
    # sortby / page
    ("Vms: sortby name page 2", "INVALID_SORT_DIRECTION", 17),
    ("Vms: sortby name descending", "INVALID_PAGE_FEILD", 21),  # DESC is taken, then 'ending'
    ("Vms: sortby name up", "INVALID_SORT_DIRECTION", 17),
    ("Vms: sortby foo", "INVALID_SORT_FIELD", 12),
    ("Vms: sortby Hosts.name", "INVALID_SORT_FIELD", 12),
    ("Vms: page x", "INVALID_CHARECTER", 10),
    ("Vms: page -1", "INVALID_CHARECTER", 10),
    ("Vms: page 2 sortby name", "NOTHING_COMES_AFTER_PAGE_VALUE", 12),
    ("Vms: pages 2", "INVALID_CHARECTER", 9),
    # deliberate deviations (upstream silently changes these queries)
    ("Vms: name = x c web and status = up", "INVALID_POST_CONDITION_VALUE_PHRASE", 14),
    ("Vms: name ! = x", "INVALID_CONDITION_RELATION", 10),
    ("Vms: page 2 3", "NOTHING_COMES_AFTER_PAGE_VALUE", 12),
    ("Vms: page 2x", "INVALID_CHARECTER", 11),
])
def test_invalid(query, error_class, at):
    err = error(query)
    assert (err.error_class, err.position) == (error_class, at), str(err)


@pytest.mark.parametrize("query", [
    "", "   ", "Vm", "Vms", "Vms: name", "Vms: name =", "Vms: name = ", "Vms: name = x and", "Vms: name = x or ",
    "Vms: sortby", "Vms: sortby na", "Vms: sortby name de", "Vms: sortby name desc pa", "Vms: page",
    "Vms: Hosts", "Vms: Hosts.", "Vms: Hosts.na", 'Vms: name = "abc', 'Vms: "abc', "Vms: name = x c",
    "Vms: name = x d c", "Vms: name = x vm", "Vms: cpu_usage <", "Vms: Hosts !",
])
def test_incomplete(query):
    err = error(query)
    assert err.error_class == "INCOMPLETE", str(err)
    assert 0 <= err.position <= len(query)


@pytest.mark.parametrize("query, expected", [
    ("Quotas: name = q", n("name", "q")),
    ("  vMs :name=x", n("name", "x")),
    ("Vms: namex", ("text", "namex")),
    ("Vms: name", None) and ("Vms: na", ("text", "na")),
    ("Vms: name==x", n("name", "=x")),
    ("Vms: cpu_usage >=5", n("cpu_usage", "5", ">=")),
    ("Vms: cpu_usage>=-5", n("cpu_usage", "-5", ">=")),
    ("Hosts: load > 1e3", n("load", "1e3", ">")),
    ("Vms: has_illegal_images = TRUE", n("has_illegal_images", "TRUE")),
    ("Events: time = monday", n("time", "monday")),
    ("Events: time < \"Monday, January 15, 2024\"", n("time", "Monday, January 15, 2024", "<")),
    ("Vms: uptime > 1.02:03:04", n("uptime", "1.02:03:04", ">")),
    ("Vms: name = homepage", n("name", "homepage")),
    ("Vms: name = and", n("name", "and")),
    ("Vms: name = x orange", ("or", n("name", "x"), ("text", "ange"))),
    ("Vms: name = x andy", ("and", n("name", "x"), ("text", "y"))),
    ("Vms: name = x web", ("and", n("name", "x"), ("text", "web"))),
    ('Vms: name = x "and"', ("and", n("name", "x"), ("text", "and"))),
    ('Vms: name = "a b"x', ("and", n("name", "a b"), ("text", "x"))),
    ("Vms: name = x vm1", ("and", n("name", "x"), ("text", "vm1"))),
    ("Vms: Storages.name = s", n("Storage.name", "s")),
    ("Vms: Hosts . name = h", n("Host.name", "h")),
    ("Vms: Hosts!=h", ("text", "Host", "!=", "h")),
    ("Vms: web and Hosts = h and Users = u", ("and", ("and", ("text", "web"), ("text", "Host", "=", "h")),
                                             ("text", "User", "=", "u"))),
    ("Vms: (web)", ("text", "(web)")),
    ("Vms: not(web)", ("text", "not(web)")),
    ("Vms: not name = x", ("and", ("text", "not"), n("name", "x"))),
    ("Vms:", None),
    ("Vms: ", None),
])
def test_valid(query, expected):
    parsed = parse(query, OVIRT, today=TODAY)
    assert parsed.normal()["where"] == expected
    assert not parsed.extended


def test_sort_and_page():
    parsed = parse("Vms: name = x sortby cpu_usage desc page 3", OVIRT)
    assert parsed.normal() == {"object": "Vm", "where": n("name", "x"), "sort": ("cpu_usage", "desc"), "page": 3}
    assert parse("Vms: page 2 ", OVIRT).page == 2          # trailing space: upstream silently page 1
    assert parse("Vms: sortbyname", OVIRT).sort.field == "name"
    assert parse("Vms: sortby name asc", OVIRT).sort.descending is False


@pytest.mark.parametrize("query, expected", [
    ("Vms: name = a or name = b and name = c",
     ("or", n("name", "a"), ("and", n("name", "b"), n("name", "c")))),
    ("Vms: name = a and name = b or name = c",
     ("or", ("and", n("name", "a"), n("name", "b")), n("name", "c"))),
    ("Vms: name = a or name = b name = c",
     ("and", ("or", n("name", "a"), n("name", "b")), n("name", "c"))),
    ("Vms: name = a or name = b or name = c and name = d name = e",
     ("and", ("or", ("or", n("name", "a"), n("name", "b")), ("and", n("name", "c"), n("name", "d"))),
      n("name", "e"))),
    ("Vms: name = a name = b and name = c",
     ("and", n("name", "a"), ("and", n("name", "b"), n("name", "c")))),
    ("Vms: name = a and name = b and name = c",
     ("and", ("and", n("name", "a"), n("name", "b")), n("name", "c"))),
])
def test_precedence_and_associativity(query, expected):
    assert where(query) == expected


def test_implicit_and_is_marked():
    tree = parse("Vms: name = a name = b", OVIRT).where
    assert tree.implicit is True
    assert parse("Vms: name = a and name = b", OVIRT).where.implicit is False


@pytest.mark.parametrize("query, expected", [
    ("Vms: (name = a or name = b) and status = up",
     ("and", ("or", n("name", "a"), n("name", "b")), n("status", "up"))),
    ("Vms: name = a or (name = b status = up)",
     ("or", n("name", "a"), ("and", n("name", "b"), n("status", "up")))),
    ("Vms: not (status = up)", ("not", n("status", "up"))),
    ("Vms: not(status = up or status = down) and name = x",
     ("and", ("not", ("or", n("status", "up"), n("status", "down"))), n("name", "x"))),
    ("Vms: NOT (Hosts.name = h1 and Hosts.cpu_usage > 5)",
     ("not", ("and", n("Host.name", "h1"), n("Host.cpu_usage", "5", ">")))),
    ("Vms: ((name = a)) and (web)", ("and", n("name", "a"), ("text", "web"))),
    ("Vms: (name = f(x) or name = y)", ("or", n("name", "f(x)"), n("name", "y"))),
    ("Vms: not (web) sortby name desc page 2", ("not", ("text", "web"))),
])
def test_extensions(query, expected):
    strict = error(query, extensions=False)
    assert strict.error_class in ("FREE_TEXT_ALLOWED_ONCE_PER_OBJ", "INVALID_CONDITION_VALUE",
                                  "INVALID_CONDITION_RELATION"), str(strict)
    parsed = parse(query, OVIRT)
    assert parsed.extended
    assert parsed.normal()["where"] == expected


@pytest.mark.parametrize("query, error_class, at", [
    ("Vms: (name = x", "INCOMPLETE", 5),
    ("Vms: (name = x sortby name)", "UNBALANCED_PARENTHESES", 15),
    ("Vms: (name = x)) name = y", "UNBALANCED_PARENTHESES", 15),
    ("Vms: ( ) name = y", "INVALID_POST_OR_AND_PHRASE", 7),
    ("Vms: (status = running or name = x)", "INVALID_CONDITION_VALUE", 15),
    ("Vms: web (db)", "FREE_TEXT_ALLOWED_ONCE_PER_OBJ", 5 + 5),
])
def test_extension_errors(query, error_class, at):
    err = error(query)
    assert (err.error_class, err.position) == (error_class, at), str(err)


def test_extended_failure_without_a_group_reports_the_upstream_error():
    err = error("Vms: web db (x")
    assert err.error_class == "FREE_TEXT_ALLOWED_ONCE_PER_OBJ" and err.position == 9


def test_error_shows_query_with_caret_and_serialises():
    err = error("Vms: status = running")
    text = str(err)
    assert text.splitlines()[1:] == ["  Vms: status = running", "                ^^^^^^^"]
    assert "Down" in err.reason and "Up" in err.reason      # says what to write instead
    body = err.to_dict()
    assert body["error"] == "invalid_search" and body["error_class"] == "INVALID_CONDITION_VALUE"
    assert (body["position"], body["end"]) == (14, 21)
    assert err.status == 422


def test_tokens_carry_spans():
    query = 'Vms: Hosts.name = "a b" sortby name'
    tokens = tokenize(query, OVIRT)
    assert [t.type for t in tokens] == [T.OBJECT, T.COLON, T.XREF, T.DOT, T.FIELD, T.OP, T.VALUE, T.SORTBY,
                                        T.SORT_FIELD]
    for token in tokens:
        assert query[token.start:token.end] == token.text
    assert tokens[6].value == "a b" and tokens[6].quoted


# ---- limits and a stray parenthesis (issue 22 items 5 and 11) ------------------------------------------------------
from search_dsl.lexer import MAX_NESTING  # noqa: E402
from search_dsl.parser import MAX_CONDITIONS  # noqa: E402


@pytest.mark.parametrize("opener", ["(", "not (", "not("])
def test_groups_nest_at_most_max_nesting_deep(opener):
    deepest = "Vms: " + opener * MAX_NESTING + "name = a" + ")" * MAX_NESTING
    assert parse(deepest, OVIRT, today=TODAY).extended
    too_deep = "Vms: " + opener * 123 + "name = a" + ")" * 123
    err = error(too_deep)
    assert err.error_class == "QUERY_TOO_COMPLEX"
    # the caret is under the first '(' too many
    assert err.position == too_deep.index("(", len("Vms: ") + len(opener) * MAX_NESTING)
    assert str(MAX_NESTING) in err.reason


@pytest.mark.parametrize("joint", [" ", " and ", " or "])
def test_a_query_has_at_most_max_conditions(joint):
    assert parse("Vms: " + joint.join(["name = a"] * MAX_CONDITIONS), OVIRT, today=TODAY)
    query = "Vms: " + joint.join(["name=a"] * 800)
    err = error(query)
    assert err.error_class == "QUERY_TOO_COMPLEX"
    assert err.position == len("Vms: ") + MAX_CONDITIONS * len("name=a" + joint)


@pytest.mark.parametrize("query, error_class, at", [
    ("Vms: status = up and (", "INCOMPLETE", len("Vms: status = up and (")),
    ("Vms: (", "INCOMPLETE", len("Vms: (")),
    ("Vms: status = up (", "INCOMPLETE", len("Vms: status = up (")),
    ("Vms: status = up )", "UNBALANCED_PARENTHESES", len("Vms: status = up ")),
    ("Vms: ()", "INVALID_POST_OR_AND_PHRASE", len("Vms: (")),
])
def test_a_stray_parenthesis_is_an_error_not_free_text(query, error_class, at):
    err = error(query)
    assert (err.error_class, err.position) == (error_class, at), str(err)
    assert "(" in err.reason or ")" in err.reason


def test_a_parenthesis_inside_a_word_or_quoted_is_still_text():
    assert where("Vms: (web)") == ("text", "(web)")
    assert where('Vms: "("') == ("text", "(")
    # upstream's reading of a stray '(' is kept when the extensions are off
    assert parse("Vms: status = up and (", OVIRT, today=TODAY, extensions=False)
