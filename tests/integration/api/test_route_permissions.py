"""Every API route declares who may call it: a `require(permission)` dependency, or an explicit public()."""
from __future__ import annotations

from collections.abc import Iterator

from fastapi import FastAPI
from fastapi.routing import APIRoute

from manager.app import create_app


def api_routes(routes) -> Iterator[APIRoute]:
    """Every APIRoute, also inside included routers (newer FastAPI keeps those as lazy wrappers)."""
    for route in routes:
        if isinstance(route, APIRoute):
            yield route
        elif getattr(route, "original_router", None) is not None:
            yield from api_routes(route.original_router.routes)
        elif getattr(route, "routes", None):
            yield from api_routes(route.routes)


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


def operations(app: FastAPI) -> int:
    return sum(len([m for m in methods if m != "parameters"]) for methods in app.openapi()["paths"].values())


def test_every_api_route_declares_a_permission(settings_env):
    app = create_app(settings_env, configure_db=False)
    routes = [r for r in api_routes(app.routes) if r.include_in_schema]
    # The walk must see every documented operation, or this audit could pass by seeing nothing.
    assert sum(len(r.methods) for r in routes) == operations(app) > 80
    missing = [f"{sorted(r.methods)} {r.path}" for r in routes if not declared_permissions(r)]
    assert missing == [], "routes without a permission: " + ", ".join(missing)


def test_the_audit_sees_an_undeclared_route(settings_env):
    app = create_app(settings_env, configure_db=False)

    @app.get("/api/v1/oops")
    def oops() -> dict:
        return {}

    undeclared = [r for r in api_routes(app.routes) if r.include_in_schema and not declared_permissions(r)]
    assert [r.path for r in undeclared] == ["/api/v1/oops"]
