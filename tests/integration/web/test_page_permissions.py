"""Every console page declares who may see it, with the API's own require(permission)."""
from __future__ import annotations

from manager.app import create_app
from tests.integration.api.test_route_permissions import api_routes, declared_permissions

# Open on purpose: the login form (and its post), and logout, which authenticates the session it ends itself.
OPEN_PAGES = {("GET", "/admin/login"), ("POST", "/admin/login"), ("POST", "/admin/logout")}


def test_every_page_declares_a_permission(settings_env):
    app = create_app(settings_env, configure_db=False)
    pages = [r for r in api_routes(app.routes) if r.path.startswith("/admin")]
    assert len(pages) > 10  # the walk sees the console, or this audit would pass by seeing nothing
    undeclared = [f"{method} {r.path}" for r in pages for method in r.methods
                  if (method, r.path) not in OPEN_PAGES and not declared_permissions(r)]
    assert undeclared == []


def test_the_page_audit_sees_an_undeclared_page(settings_env):
    app = create_app(settings_env, configure_db=False)

    @app.get("/admin/oops")
    def oops() -> dict:
        return {}

    undeclared = [r.path for r in api_routes(app.routes) if r.path.startswith("/admin") and not declared_permissions(r)
                  and not {(method, r.path) for method in r.methods} <= OPEN_PAGES]
    assert undeclared == ["/admin/oops"]
