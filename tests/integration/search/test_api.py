"""The search endpoints: 400s that say which error class and where, completion, running bookmarks (owner only),
permissions, and fuzzing (no query ever gets a 500)."""
from __future__ import annotations

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from core.enums import Role
from search_dsl import ERROR_CLASSES
from search_dsl.lexer import MAX_NESTING
from search_dsl.parser import MAX_CONDITIONS


def _token_for(role: Role | None, username: str) -> str:
    from manager import db
    from manager.auth import issue_token
    from manager.models import RoleAssignment, User

    with db.session_scope() as session:
        user = User(username=username, domain="local")
        session.add(user)
        session.flush()
        if role is not None:
            session.add(RoleAssignment(user_id=user.id, role=role))
        return issue_token(session, user, name="tests")


@pytest.fixture(scope="module")
def helpdesk(api):
    return {"Authorization": f"Bearer {_token_for(Role.HELP_DESK, 'helpdesk-tester')}"}


@pytest.fixture(scope="module")
def plain_user(api):
    return {"Authorization": f"Bearer {_token_for(Role.USER, 'plain-tester')}"}


@pytest.mark.parametrize("query, error_class, at", [
    ("Vms: status = running", "INVALID_CONDITION_VALUE", "running"),
    ("Vms: name = O'Brien", "INVALID_CHARECTER", "'"),
    ("Vms: cpu_usage = abc", "INVALID_CONDITION_VALUE", "abc"),
    ("Vms: name > x", "INVALID_CONDITION_RELATION", ">"),
    ("Datacenter: sortby name", "INVALID_SEARCH_OBJECT", "Datacenter"),
    ("Vms: name = x page 2 sortby name", "NOTHING_COMES_AFTER_PAGE_VALUE", "sortby"),
    ("Vms: user.username = x", "INVALID_CONDITION_FILED", "username"),
    ("Hosts: agent_token = x", "FREE_TEXT_ALLOWED_ONCE_PER_OBJ", "="),
    ("Vms: name = x\x00", "INVALID_CHARECTER", "\x00"),
])
def test_errors_are_400_with_class_and_position(api, query, error_class, at):
    response = api.get("/api/v1/search", params={"q": query})
    assert response.status_code == 400
    body = response.json()
    assert body["error"] == error_class
    assert body["position"] == query.index(at)
    assert body["end"] > body["position"] and body["query"] == query
    assert body["detail"] and "Traceback" not in body["detail"]


def test_incomplete_query_says_what_to_add(api):
    body = api.get("/api/v1/search", params={"q": "Vms: name ="}).json()
    assert body["error"] == "INCOMPLETE"
    assert body["position"] == len("Vms: name =")


def test_page_size_is_checked(api):
    response = api.get("/api/v1/search", params={"q": "Vms:", "page_size": 0})
    assert response.status_code == 422
    assert api.get("/api/v1/search", params={"q": "Vms:", "page_size": 1001}).status_code == 422


@pytest.mark.parametrize("text, partial, expected", [
    ("", "", {"Vm", "Host", "Template", "User", "Group", "Pool", "Event", "Cluster", "Storage", "Disk"}),
    ("Vms: st", "st", {"status", "Storage"}),
    ("Vms: status = ", "", {"Up", "Down", "Paused", "MigratingFrom"}),
    ("Vms: Hosts.", "", {"name", "cpu_usage", "status"}),
    ("Events: severity ", "", {"<", ">", "<=", ">=", "=", "!="}),
    ("Users: usrname = x ", "", {"and", "or", "sortby", "page"}),
])
def test_completion(api, text, partial, expected):
    response = api.get("/api/v1/search/complete", params={"q": text})
    assert response.status_code == 200
    body = response.json()
    assert body["partial"] == partial and body["start"] == len(text) - len(partial)
    assert expected <= set(body["suggestions"])
    assert body["error"] is None


def test_completion_of_an_invalid_prefix_reports_the_error(api):
    body = api.get("/api/v1/search/complete", params={"q": "Vms: status = running and"}).json()
    assert body["suggestions"] == [] and body["error"]["error"] == "INVALID_CONDITION_VALUE"


def test_bookmarks_run_for_their_owner_only(api, helpdesk, plain_user):
    created = api.post("/api/v1/bookmarks", json={"name": "running web", "query": "Vms: name = web* and status = up"})
    assert created.status_code == 201, created.text
    bookmark_id = created.json()["id"]
    run = api.get(f"/api/v1/bookmarks/{bookmark_id}/run")
    assert run.status_code == 200
    assert {d["name"] for d in run.json()["items"]} == {"web1", "web2"} and run.json()["kind"] == "desktop"
    assert api.get(f"/api/v1/bookmarks/{bookmark_id}/run", params={"page_size": 1}).json()["pages"] == 2
    # someone else's bookmark does not exist for you
    assert api.get(f"/api/v1/bookmarks/{bookmark_id}/run", headers=helpdesk).json()["error"] == "not_found"
    assert api.get("/api/v1/bookmarks/no-such-id/run").status_code == 404
    # a user may keep bookmarks but not search the inventory
    own = api.post("/api/v1/bookmarks", json={"name": "mine", "query": "Vms: name = *"}, headers=plain_user)
    assert own.status_code == 201
    assert api.get(f"/api/v1/bookmarks/{own.json()['id']}/run", headers=plain_user).status_code == 403
    # a query that cannot run is refused when saved, with its error class and position
    broken = api.post("/api/v1/bookmarks", json={"name": "broken", "query": "Vms: status = running"})
    assert broken.status_code == 400
    assert broken.json()["error"] == "INVALID_CONDITION_VALUE" and broken.json()["position"] == 14
    # one stored before queries were checked on save still runs into a clean 400
    body = api.get(f"/api/v1/bookmarks/{stored_bookmark('Vms: status = running')}/run").json()
    assert body["error"] == "INVALID_CONDITION_VALUE" and body["position"] == 14


def stored_bookmark(query: str) -> str:
    from manager import db
    from manager.models import Bookmark, User

    with db.session_scope() as session:
        admin = session.query(User).filter_by(username="admin", domain="local").one()
        bookmark = Bookmark(name=f"stored {len(query)}", query=query, owner_id=admin.id)
        session.add(bookmark)
        session.flush()
        return bookmark.id


DEEP_PARENS = "Vms: " + "(" * 123 + "name = a" + ")" * 123
DEEP_NOTS = "Vms: " + "not (" * 83 + "name = a" + ")" * 83


@pytest.mark.parametrize("query", [DEEP_PARENS, DEEP_NOTS, "Vms: " + " or ".join(["name=a"] * 900)])
def test_too_complex_queries_are_a_400_with_a_position(api, query):
    response = api.get("/api/v1/search", params={"q": query})
    assert response.status_code == 400, response.text[:300]
    body = response.json()
    assert body["error"] == "QUERY_TOO_COMPLEX" and 0 < body["position"] < len(query)


@pytest.mark.parametrize("query", [
    "Vms: " + "(" * MAX_NESTING + "name = a or status = up" + ")" * MAX_NESTING,
    "Vms: " + "not (" * MAX_NESTING + "name = a" + ")" * MAX_NESTING,
    "Vms: " + " or ".join(f"name = web{i}" for i in range(MAX_CONDITIONS)),
    "Vms: " + "(" * MAX_NESTING + " or ".join(["Hosts.name = h*"] * (MAX_CONDITIONS // 2)) + ")" * MAX_NESTING,
])
def test_the_most_complex_queries_allowed_run_on_postgres(api, query):
    response = api.get("/api/v1/search", params={"q": query})
    assert response.status_code == 200, response.text[:300]


def test_a_stray_parenthesis_is_a_400_with_its_position(api):
    query = "Vms: status = up and ("
    response = api.get("/api/v1/search", params={"q": query})
    assert response.status_code == 400, response.text
    assert response.json()["error"] == "INCOMPLETE" and response.json()["position"] == len(query)
    assert "'('" in response.json()["detail"]


def test_the_deepest_search_page_is_served(api):
    response = api.get("/api/v1/search", params={"q": "Vms: page 1000000000", "page_size": 1000})
    assert response.status_code == 200, response.text
    assert response.json()["items"] == []
    too_deep = api.get("/api/v1/search", params={"q": "Vms: page 1000000001"})
    assert too_deep.status_code == 400 and too_deep.json()["error"] == "INVALID_PAGE_VALUE"


@pytest.mark.parametrize("query", [DEEP_PARENS, DEEP_NOTS, "Vms: status = up and ("])
def test_a_bookmark_keeps_only_a_query_that_runs(api, query):
    saved = api.post("/api/v1/bookmarks", json={"name": "deep", "query": query})
    assert saved.status_code == 400, saved.text[:300]
    assert saved.json()["error"] in ERROR_CLASSES
    good = api.post("/api/v1/bookmarks", json={"name": f"good {len(query)}", "query": "Vms: name = x"})
    assert good.status_code == 201
    changed = api.patch(f"/api/v1/bookmarks/{good.json()['id']}", json={"query": query})
    assert changed.status_code == 400, changed.text[:300]
    assert api.get(f"/api/v1/bookmarks/{good.json()['id']}").json()["query"] == "Vms: name = x"


def test_search_needs_the_search_permission(api, helpdesk, plain_user):
    assert api.get("/api/v1/search", params={"q": "Vms:"}, headers=plain_user).status_code == 403
    assert api.get("/api/v1/search/complete", params={"q": "Vms:"}, headers=plain_user).status_code == 403
    assert api.get("/api/v1/search", params={"q": "Vms:"}, headers=helpdesk).status_code == 200
    assert api.get("/api/v1/search", params={"q": "Vms:"}, headers={"Authorization": "Bearer nope"}).status_code == 401


WORDS = ["Vms:", "Hosts:", "Users:", "Events:", "Templates:", "Pools:", "Disks:", "Storage:", "name", "status",
         "=", "!=", "<", ">=", "and", "or", "AND", "sortby", "page", "desc", "*", "web*", "up", '"', "(", ")",
         "not(", "Hosts.", "Users.usrname", "Vms.name", "tag", "severity", "time", "today", "01/15/2024", "uptime",
         "01:30", "-5", "99999999999", "apps", "\\", "%", "_", "@", ".", ":", "usrname", "x@y", "cpu_usage", "id"]
OPENERS = ["(", "not (", "not(", "( ", "(("]
# Deeply nested queries: openers, a term, as many closers (mostly; sometimes one too few or too many), a tail.
nested = st.builds(
    lambda depth, opener, term, extra, tail: "Vms: " + opener * depth + term + ")" * max(0, depth + extra) + tail,
    st.one_of(st.sampled_from([MAX_NESTING, MAX_NESTING + 1, 83, 123, 300]), st.integers(0, 300)),
    st.sampled_from(OPENERS), st.sampled_from(["name = a", "status = up or web", "web",
                                                                     "Hosts.name = h* and not (name = b)"]),
    st.sampled_from([0, 0, 0, 0, -1, 1]), st.sampled_from(["", "", " sortby name", " and (", " page 2",
                                                            " or name = c"]))
queries = st.one_of(
    nested,
    st.lists(st.sampled_from(WORDS), max_size=12).map(" ".join),
    st.lists(st.sampled_from(WORDS), max_size=12).map("".join),
    st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=60),
    st.tuples(st.sampled_from(WORDS[:8]), st.text(max_size=40, alphabet=st.characters(
        blacklist_categories=("Cs",)))).map(" ".join),
)


@settings(max_examples=300, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(query=queries)
@example(query=DEEP_PARENS)
@example(query=DEEP_NOTS)
@example(query="Vms: " + "(" * 300 + "web" + ")" * 300)
def test_no_query_gets_a_500(api, query):
    response = api.get("/api/v1/search", params={"q": query, "page_size": 5})
    assert response.status_code in (200, 400), (query, response.text)
    body = response.json()
    if response.status_code == 400:
        assert body["error"] in ERROR_CLASSES
        assert 0 <= body["position"] <= len(query)
    else:
        assert body["total"] >= len(body["items"])
    completion = api.get("/api/v1/search/complete", params={"q": query})
    assert completion.status_code == 200, (query, completion.text)
