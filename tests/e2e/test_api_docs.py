"""The API documentation pages render in a browser with no internet: Swagger UI at /docs, ReDoc at /redoc.

The harness (conftest.py) aborts and reports any request beyond 127.0.0.1, so passing also means neither page
reached for a CDN, a font or a logo.
"""
from __future__ import annotations

from playwright.sync_api import expect


def test_swagger_ui_lists_and_calls_the_api_offline(page):
    page.goto("/docs")
    expect(page).to_have_title("VDI manager - Swagger UI")
    expect(page.get_by_role("heading", name="VDI manager", exact=False).first).to_be_visible()

    page.get_by_role("button", name="GET /api/v1/health Health", exact=True).click()
    page.get_by_role("button", name="Try it out").click()
    page.get_by_role("button", name="Execute").click()

    expect(page.get_by_role("heading", name="Server response")).to_be_visible()
    expect(page.get_by_role("code").filter(has_text='"backend": "postgresql"')).to_be_visible()


def test_redoc_shows_the_operations_and_searches_them_offline(page):
    page.goto("/redoc")
    expect(page).to_have_title("VDI manager - ReDoc")
    expect(page.get_by_role("heading", name="VDI manager (0.1.0)", level=1)).to_be_visible()
    expect(page.get_by_role("button", name="get /api/v1/health", exact=True)).to_be_attached()

    page.get_by_role("textbox", name="Search").fill("health")  # ReDoc's search runs in a web worker
    expect(page.get_by_role("menuitem", name="Health")).to_be_visible()
