"""Every API route declares who may call it: a `require(permission)` dependency, or an explicit public()."""
from __future__ import annotations

from fastapi.routing import APIRoute

from manager.app import create_app


def declared_permissions(route: APIRoute) -> list[str]:
    found = []
    stack = list(route.dependant.dependencies)
    while stack:
        dep = stack.pop()
        permission = getattr(dep.call, "permission", None)
        if permission:
            found.append(permission)
        stack.extend(dep.dependencies)
    return found


def test_every_api_route_declares_a_permission(settings_env):
    app = create_app(settings_env, configure_db=False)
    missing = [f"{sorted(r.methods)} {r.path}" for r in app.routes
               if isinstance(r, APIRoute) and r.path.startswith("/api/") and not declared_permissions(r)]
    assert missing == [], "routes without a permission: " + ", ".join(missing)


def test_the_audit_sees_an_undeclared_route(settings_env):
    app = create_app(settings_env, configure_db=False)

    @app.get("/api/v1/oops")
    def oops() -> dict:
        return {}

    route = next(r for r in app.routes if isinstance(r, APIRoute) and r.path == "/api/v1/oops")
    assert declared_permissions(route) == []
