import pytest
from hypothesis import given, settings, strategies as st

from search_dsl import parse
from search_dsl.complete import ValueOf, complete, value_text

from .ovirt_catalogue import OVIRT


def suggest(text):
    return complete(text, OVIRT).suggestions


def test_object_names_then_colon():
    assert set(suggest("")) >= {"Vm", "Host", "Template", "Event", "DataCenter"}
    assert "Vnic" not in suggest("")  # internal objects are not searchable
    assert suggest("V") == ("Vm", "Volume", "VnicProfile")
    assert suggest("Vms") == (":",)
    assert suggest("Vms ") == (":",)


def test_after_colon_fields_cross_references_and_keywords():
    after = suggest("Vms: ")
    assert {"name", "status", "cpu_usage", "Host", "User", "sortby", "page"} <= set(after)
    assert suggest("Vms: na") == ("name",)
    assert suggest("Hosts: i") == ()                       # 'id' is hidden, as upstream
    result = complete("Vms: cpu", OVIRT)
    assert (result.start, result.partial, result.suggestions) == (5, "cpu", ("cpu_usage",))


def test_operators_and_values_of_the_field():
    assert suggest("Vms: name ") == ("=", "!=")
    assert suggest("Vms: cpu_usage ") == ("<", ">", "<=", ">=", "=", "!=")
    assert suggest("Vms: cpu_usage >") == ()               # '>' complete; the value comes next
    assert suggest("Vms: uptime ") == ("<", ">")
    assert "Up" in suggest("Vms: status = ") and "Down" in suggest("Vms: status = ")
    assert suggest("Vms: status = pau") == ("Paused",)
    assert suggest("Vms: has_illegal_images = ") == ("true", "false")
    assert "today" in suggest("Events: time = ") and "monday" in suggest("Events: time > ")
    assert suggest("Vms: name = ") == ()


def test_cross_references():
    assert suggest("Vms: Hosts") == (".", "=", "!=")
    assert suggest("Vms: Hosts.cpu") == ("cpu_usage", "cpus", "cpu_speed", "cpu_model")
    assert suggest("Vms: Users.usr") == ("usrname",)
    assert suggest("Vms: Hosts.cpu_usage ") == ("<", ">", "<=", ">=", "=", "!=")


def test_after_a_value_connectives_and_more():
    after = suggest("Vms: name = x ")
    assert after[:2] == ("and", "or") and "sortby" in after and "status" in after and "Host" in after
    assert suggest("Vms: name = x o") == ("or", "on_host", "os")
    assert "name" in suggest("Vms: name = x and ")
    assert "sortby" not in suggest("Vms: name = x and ")


def test_sortby_and_page():
    assert "tag" not in suggest("Vms: sortby ")            # several values per row: not sortable
    assert suggest("Vms: sortby cpu") == ("cpu_usage",)
    assert suggest("Vms: sortby name ") == ("asc", "desc")
    assert suggest("Vms: sortby name de") == ("desc",)
    assert suggest("Vms: sortby name desc ") == ("page",)
    assert suggest("Vms: page ") == ()


def test_invalid_prefix_gives_no_suggestions_and_the_error():
    result = complete("Vms: status = running and ", OVIRT)
    assert result.suggestions == () and result.error is not None
    assert result.error.error_class == "INVALID_CONDITION_VALUE"
    assert complete("Xyz", OVIRT).error.error_class == "INVALID_SEARCH_OBJECT"


def test_every_suggested_field_is_read_as_that_field():
    for prefix in ("Vms: ", "Vms: name = x ", "Hosts: Vms.", "Users: type = u and "):
        fields = [w for w in suggest(prefix) if w not in ("sortby", "page", "and", "or") and not w[0].isupper()]
        assert fields
        for word in fields:
            result = complete(prefix + word + " ", OVIRT)
            assert result.error is None and "=" in result.suggestions + ("=",) and result.suggestions, word


# ---- values from the caller's data: which field a value is typed for, and how to write one ---------------------
@pytest.mark.parametrize("text, value_of", [
    ("Vms: name = ", ValueOf("Vm", "name")),
    ("Vms: name = we", ValueOf("Vm", "name")),
    ("Vms: on_host != h", ValueOf("Vm", "on_host")),
    ("Vms: status = pau", ValueOf("Vm", "status")),
    ("Vms: Hosts.name = v", ValueOf("Vm", "name", xref="Host")),
    ("Vms: Hosts.name=v", ValueOf("Vm", "name", xref="Host")),
    ("Vms: Hosts = v", ValueOf("Vm", None, xref="Host")),
    ("Vms: Users.usrname = jo", ValueOf("Vm", "usrname", xref="User")),
    # after a condition through a cross-reference, a plain field is the searched object's again
    ("Vms: Hosts.name = a and name = b", ValueOf("Vm", "name")),
    ("Vms: Hosts = a or tag = ", ValueOf("Vm", "tag")),
    ('Vms: name = "my v', ValueOf("Vm", "name")),
    ("Hosts: name = h", ValueOf("Host", "name")),
])
def test_value_of_names_the_field_being_typed(text, value_of):
    assert complete(text, OVIRT).value_of == value_of


@pytest.mark.parametrize("text", ["", "Vms", "Vms: ", "Vms: na", "Vms: name ", "Vms: name = x ", "Vms: Hosts",
                                  "Vms: Hosts.", 'Vms: name = "my vm"', "Vms: sortby name", "Vms: status = running x"])
def test_value_of_is_none_when_no_value_is_typed(text):
    assert complete(text, OVIRT).value_of is None


def test_value_prefix_keeps_the_spaces_of_an_open_quote():
    result = complete('Vms: name = "my ', OVIRT)
    assert (result.start, result.partial, result.quoted, result.value_prefix) == (12, '"my ', True, "my ")
    plain = complete("Vms: name = we", OVIRT)
    assert (plain.start, plain.partial, plain.quoted, plain.value_prefix) == (12, "we", False, "we")


@pytest.mark.parametrize("value, quoted, written", [
    ("web-01", False, "web-01"), ("web-01", True, '"web-01"'), ("my vm", False, '"my vm"'), ("", False, '""'),
    ("a(b)", False, '"a(b)"'), ("and", False, "and"), ("vm*", False, "vm*"),
    ("O'Brien", False, None), ("x;y", False, None), ('say "hi"', False, None), ("ends\\", False, None),
])
def test_value_text_is_read_back_as_the_value(value, quoted, written):
    assert value_text(value, quoted=quoted) == written
    if written is None:
        return
    for query in (f"Vms: name = {written}", f"Vms: (name = {written} or name = x)", f"Vms: Hosts.name = {written}"):
        condition = parse(query, OVIRT, extensions=True).where
        first = condition.left if hasattr(condition, "left") else condition
        assert first.value == value, query


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.sampled_from(list("Vms: nameHost.=!<>\"up and or sortby page 12")), max_size=30))
def test_never_raises(text):
    result = complete(text, OVIRT)
    assert 0 <= result.start <= len(text)
