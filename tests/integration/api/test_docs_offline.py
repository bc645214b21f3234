"""/docs and /redoc work without internet: every asset their HTML names is served by the manager itself.

(tests/e2e/test_api_docs.py renders both pages in chromium and fails on any request leaving 127.0.0.1.)
"""
from __future__ import annotations

import re
from html.parser import HTMLParser
from urllib.parse import urljoin, urlsplit

import pytest

BASE = "http://testserver"


class _Urls(HTMLParser):
    """Every URL an HTML page makes the browser load: src/href attributes, ReDoc's spec-url and the `url: '...'`
    that Swagger UI's inline script fetches."""

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []
        self._in_script = False

    def handle_starttag(self, tag, attrs):
        self._in_script = tag == "script"
        self.urls += [value for name, value in attrs if name in ("src", "href", "spec-url") and value]

    def handle_endtag(self, tag):
        self._in_script = False

    def handle_data(self, data):
        if self._in_script:
            self.urls += re.findall(r"""\burl\s*:\s*['"]([^'"]+)['"]""", data)


def page_urls(html: str) -> list[str]:
    parser = _Urls()
    parser.feed(html)
    return parser.urls


def test_the_url_finder_sees_external_assets():
    html = ('<link href="https://cdn.example/a.css"><script src="//cdn.example/b.js"></script>'
            '<redoc spec-url="/openapi.json"></redoc><script>SwaggerUIBundle({url: \'/x.json\'})</script>')
    assert page_urls(html) == ["https://cdn.example/a.css", "//cdn.example/b.js", "/openapi.json", "/x.json"]


@pytest.mark.postgres
@pytest.mark.parametrize("page", ["/docs", "/redoc"])
def test_docs_page_loads_only_same_origin_assets_that_answer(anon_client, page):
    response = anon_client.get(page)
    assert response.status_code == 200
    # what the page's scripts add later (ReDoc's Redocly logo from a CDN) the browser refuses
    assert "default-src 'self'" in response.headers["content-security-policy"]
    urls = page_urls(response.text)
    assert any(u.endswith(".js") for u in urls), urls  # the page does name its script
    for url in urls:
        absolute = urljoin(f"{BASE}{page}", url)
        assert urlsplit(absolute).netloc == urlsplit(BASE).netloc, f"{page} loads {url} from another origin"
        assert anon_client.get(absolute).status_code == 200, url
