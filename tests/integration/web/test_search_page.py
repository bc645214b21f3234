"""The search page: the same totals and rows as GET /api/v1/search, sorting and paging as rewritten queries in the
URL, errors with a caret under the position the server reports, bookmarks."""
from __future__ import annotations

import html
import re
from urllib.parse import parse_qs, urlparse

import pytest

from manager import db
from manager.models import Bookmark, Desktop


@pytest.fixture
def desktops(admin_browser):
    with db.session_scope() as session:
        session.add_all(Desktop(name=f"web-{i:03d}", cpu_usage=i % 100, memory_mib=256) for i in range(130))
    return admin_browser


def _queries_of_links(page: str, rel: str | None = None) -> list[str]:
    pattern = r'<a href="/admin\?q=([^"]+)"' + (rf'[^>]*rel="{rel}"' if rel else "")
    return [parse_qs("q=" + html.unescape(m))["q"][0] for m in re.findall(pattern, page)]


def test_results_have_the_apis_total_and_a_header_row(desktops, client):
    query = "Vms: name = web-* and cpu_usage > 50"
    api = client.get("/api/v1/search", params={"q": query}).json()
    response = desktops.get("/admin", params={"q": query})
    assert response.status_code == 200
    assert f'data-total="{api["total"]}"' in response.text and api["total"] == 49  # i % 100 in 51..99
    assert '<th scope="col"' in response.text
    first = api["items"][0]["name"]
    assert f'>{first}</a>' in response.text


def test_sorting_and_paging_are_the_query_itself(desktops):
    page1 = desktops.get("/admin", params={"q": "Vms: name = web-*"}).text
    sorts = _queries_of_links(page1)
    assert "Vms: name = web-* sortby cpu_usage" in sorts
    assert _queries_of_links(page1, "next") == ["Vms: name = web-* page 2"]
    page2 = desktops.get("/admin", params={"q": "Vms: name = web-* page 2"}).text
    assert ">web-100</a>" in page2 and ">web-099</a>" not in page2 and 'aria-current="page">2<' in page2
    descending = desktops.get("/admin", params={"q": "Vms: name = web-* sortby name"}).text
    assert 'aria-sort="ascending"' in descending
    assert "Vms: name = web-* sortby name desc" in _queries_of_links(descending)


def test_an_invalid_query_shows_its_error_under_the_right_position(admin_browser, client):
    query = "Vms: status = running"
    api = client.get("/api/v1/search", params={"q": query})
    assert api.status_code == 400
    position = api.json()["position"]
    response = admin_browser.get("/admin", params={"q": query})
    assert response.status_code == 400
    caret = re.search(r'<pre class="caret"[^>]*>(.*?)</pre>', response.text, re.S).group(1)
    query_line, marks = html.unescape(caret).split("\n")
    assert query_line == query
    assert marks.index("^") == position == query.index("running")
    assert api.json()["error"] in response.text


def test_bookmarks_are_listed_for_their_owner_only(admin_browser):
    with db.session_scope() as session:
        from manager.models import User

        admin = session.query(User).filter_by(username="admin").one()
        session.add(Bookmark(name="busy desktops", query="Vms: cpu_usage > 90", owner_id=admin.id))
    page = admin_browser.get("/admin").text
    assert "busy desktops" in page and "Vms: cpu_usage &gt; 90" in page
    assert _queries_of_links(page).count("Vms: cpu_usage > 90") == 1


def test_query_links_are_shareable_urls(desktops):
    page = desktops.get("/admin", params={"q": "Vms: name = web-0*"}).text
    for query in _queries_of_links(page):
        assert desktops.get("/admin", params={"q": query}).status_code == 200, query
    assert urlparse("/admin?q=x").path == "/admin"
