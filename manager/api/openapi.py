"""The API's error replies in its OpenAPI document, for every route, in one place.

Every error the API sends has one shape, `{"error": code, "detail": message}` (`ErrorOut`; common.py renders
them). FastAPI's document knows none of it: it lists only 422, with its own HTTPValidationError (a `detail` array)
that the API never sends. `install_error_docs` wraps `app.openapi()` so that the document, built once, says what
each operation can really answer, from what the route is rather than from per-route lists:

* a route that needs a credential (a `require(...)` or other non-public permission dependency): 401, and 403
  where a role permission is checked (`require`);
* a route with path parameters, or one that needs a credential and takes a body (which names objects): 404 (an
  unknown id, or one the caller may not see);
* a route with query parameters or a body: 400 (an unknown parameter, a field it cannot sort by, a search the
  language rejects) and 422 (invalid input);
* a route with a body: 413 (larger than VDI_MAX_BODY_BYTES, or the upload limit);
* a state-changing route that needs a credential: 409 (a duplicate, an object in use, a busy desktop);
* a route that uses the database: 503 (it is unavailable);
* whatever a route or router declares with `responses=error_responses(...)`: the rarer answers (429 from a
  password check, 502/503/504 from a host that fails or does not answer, NODE_ERRORS).

Each of these, and every other 4xx/5xx the document lists, refers to ErrorOut; HTTPValidationError is gone.
A route added later is covered by the same rules (tests/integration/api/test_openapi_errors.py walks them all).
"""
from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.routing import APIRoute
from pydantic import BaseModel, ConfigDict, Field
from starlette.routing import compile_path

from manager.api.guard import api_routes
from manager.db import request_session


class FieldError(BaseModel):
    loc: list[str | int] = Field(description="where: e.g. [\"body\", \"name\"] or [\"query\", \"page\"]")
    msg: str


class ErrorOut(BaseModel):
    """Every error reply of the API."""

    model_config = ConfigDict(extra="allow", title="ErrorOut")

    error: str = Field(description="a stable code to act on: not_found, duplicate, invalid, not_authenticated, "
                                   "forbidden, in_use, desktop_busy, too_large, too_many_requests, "
                                   "unavailable, or a search error class (400 from a search)")
    detail: str = Field(description="what went wrong and what to do about it, for people")
    errors: list[FieldError] | None = Field(None, description="422 from validation: each invalid field")
    retry_after: int | None = Field(None, description="429: seconds to wait (also the Retry-After header)")
    position: int | None = Field(None, description="400 from a search: where the problem starts in the query")
    end: int | None = Field(None, description="400 from a search: where it ends")
    query: str | None = Field(None, description="400 from a search: the query as received")


DESCRIPTIONS = {
    400: "Bad request: an unknown parameter, a field that cannot be sorted by, a query the search language "
         "rejects (with its position)",
    401: "No credential, or an unknown or expired one: log in, or send a valid bearer token",
    403: "Your roles do not allow this, the account is disabled, or a browser session sent no CSRF token",
    404: "No such object (or one you may not see)",
    409: "Conflicts with the current state: a duplicate, an object still in use, a busy desktop, a full pool",
    413: "The request body is larger than the limit",
    422: "Invalid input: `detail` says what to fix, `errors` lists each field",
    429: "Too many attempts: wait `retry_after` seconds",
    502: "The hypervisor failed the operation",
    503: "A host, the directory or the database is unavailable",
    504: "A host or the database did not answer in time",
}
ERROR_REF = {"$ref": "#/components/schemas/ErrorOut"}
WRITE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})


def error_responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """`responses=` for a route or router that can answer these codes besides the ones its shape implies."""
    return {code: {"model": ErrorOut, "description": DESCRIPTIONS[code]} for code in codes}


# Routes that call a host's node agent while the client waits (power actions, consoles, the broker).
NODE_ERRORS = error_responses(502, 503, 504)


def _dependants(route: APIRoute) -> list[Any]:
    """The route's dependant and every sub-dependency's, depth first."""
    found, stack = [], [route.dependant]
    while stack:
        dependant = stack.pop()
        found.append(dependant)
        stack.extend(dependant.dependencies)
    return found


def implied_errors(route: APIRoute, operation: dict[str, Any]) -> set[int]:
    """The error statuses an API route can answer by its shape (see the module); `operation` is its entry in the
    document (a body read by the route itself, as the upload's, is documented there)."""
    dependants = _dependants(route)
    credential = {getattr(d.call, "permission", None) for d in dependants} - {None, "public"}
    takes = {kind for d in dependants for kind in ("path", "query", "header", "cookie", "body")
             if getattr(d, f"{kind}_params")}
    if "requestBody" in operation:
        takes.add("body")
    codes = set()
    if credential:
        codes.add(401)
    if credential - {"node"}:  # the node heartbeat's token is checked, no role
        codes.add(403)
    if "path" in takes or (credential and "body" in takes):
        codes.add(404)
    if takes & {"query", "body"}:
        codes.add(400)
    if takes:
        codes.add(422)
    if "body" in takes:
        codes.add(413)
    if credential and route.methods & WRITE_METHODS:
        codes.add(409)
    if any(d.call is request_session for d in dependants):
        codes.add(503)  # the database is unavailable (common.py's OperationalError handler)
    return codes


def document_errors(schema: dict[str, Any], app: FastAPI, prefix: str) -> dict[str, Any]:
    """Rewrite `schema` (app.openapi()'s document) in place: ErrorOut for every error reply (see the module)."""
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    error_schema = ErrorOut.model_json_schema(ref_template="#/components/schemas/{model}")
    components.update(error_schema.pop("$defs", {}))
    components["ErrorOut"] = error_schema
    for path, route in api_routes(app):
        if not isinstance(route, APIRoute) or not route.include_in_schema or not path.startswith(prefix):
            continue
        operations = schema["paths"].get(compile_path(path)[1], {})
        for method in route.methods:
            operation = operations.get(method.lower())
            if operation is None:
                continue
            responses = operation.setdefault("responses", {})
            codes = implied_errors(route, operation) | {int(code) for code in responses if str(code).isdigit()
                                             and int(code) >= 400}
            for code in sorted(codes):
                given = responses.get(str(code), {})
                responses[str(code)] = {
                    "description": DESCRIPTIONS.get(code) or given.get("description", "Error"),
                    "content": {"application/json": {"schema": ERROR_REF}}}
    for name in ("HTTPValidationError", "ValidationError"):
        components.pop(name, None)
    return schema


def install_error_docs(app: FastAPI, prefix: str) -> None:
    """Make `app.openapi()` (served at /openapi.json, shown by /docs) document the API's errors."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = document_errors(build(), app, prefix)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
