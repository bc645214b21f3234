"""The console's sort and page links rewrite only the query's tail."""
from __future__ import annotations

import pytest

from manager.search_fields import REGISTRY
from search_dsl import SearchError, parse
from search_dsl.rewrite import with_tail


@pytest.mark.parametrize(("query", "kwargs", "expected"), [
    ("Vms: status = up", {"page": 2}, "Vms: status = up page 2"),
    ("Vms: status = up sortby name desc page 3", {}, "Vms: status = up sortby name desc"),
    ("Vms: status = up sortby name desc page 3", {"page": 4}, "Vms: status = up sortby name desc page 4"),
    ("Vms: status = up page 3", {"sort": "cpu_usage", "descending": True}, "Vms: status = up sortby cpu_usage desc"),
    ("Vms: (name = a* or name = b*) sortby name", {"sort": "name", "descending": True},
     "Vms: (name = a* or name = b*) sortby name desc"),
    ("Hosts:", {"page": 1}, "Hosts:"),
    ("Vms: sortby name", {"keep_sort": False, "page": 2}, "Vms: page 2"),
    # a value that reads like a keyword stays a value
    ("Vms: name = \"page 2\"", {"page": 2}, "Vms: name = \"page 2\" page 2"),
])
def test_with_tail(query, kwargs, expected):
    rewritten = with_tail(query, REGISTRY, **kwargs)
    assert rewritten == expected
    parse(rewritten, REGISTRY, extensions=True)  # still a valid query


def test_an_invalid_query_is_refused():
    with pytest.raises(SearchError):
        with_tail("Vms: status = running page", REGISTRY)
