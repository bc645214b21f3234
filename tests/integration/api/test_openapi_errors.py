"""The OpenAPI document tells the truth about errors (issue 22 item 12): every error reply of every API operation is
ErrorOut, the shape the API sends, with the statuses the route's shape implies; FastAPI's HTTPValidationError (a
`detail` array the API never sends) is gone. Routes added later are covered by the same rules."""
from __future__ import annotations

import jsonschema_rs
from fastapi.testclient import TestClient

from manager.api.openapi import ErrorOut
from manager.app import create_app
from manager.auth import require

ERROR_REF = {"$ref": "#/components/schemas/ErrorOut"}


def error_codes(operation: dict) -> dict[int, dict]:
    return {int(code): reply for code, reply in operation["responses"].items() if int(code) >= 400}


def operations(schema: dict):
    for path, methods in schema["paths"].items():
        for method, operation in methods.items():
            yield method.upper(), path, operation


def test_every_error_reply_is_documented_as_error_out(settings_env):
    schema = create_app(settings_env, configure_db=False).openapi()
    assert "HTTPValidationError" not in str(schema) and "ValidationError" not in schema["components"]["schemas"]
    wrong, checked = [], 0
    for method, path, operation in operations(schema):
        for code, reply in error_codes(operation).items():
            checked += 1
            if reply.get("content") != {"application/json": {"schema": ERROR_REF}}:
                wrong.append(f"{method} {path} {code}")
        codes = set(error_codes(operation))
        expected = set()
        if path not in ("/api/v1/health", "/api/v1/auth/login"):
            expected |= {401, 503}  # no credential; the database unavailable (it checks the credential)
        if "{" in path:
            expected.add(404)
        if "requestBody" in operation:
            expected |= {400, 413, 422}
        if not expected <= codes:
            wrong.append(f"{method} {path}: {sorted(expected - codes)} missing")
    assert checked > 300 and wrong == []


def test_the_documented_422_is_what_the_api_sends(settings_env):
    app = create_app(settings_env, configure_db=False)
    schema = app.openapi()
    documented = {**ERROR_REF, "components": schema["components"]}
    with TestClient(app) as client:  # the body is checked before the route's dependencies (no database needed)
        client.headers["Authorization"] = "Bearer anything"
        reply = client.post("/api/v1/auth/login", json={"username": ["not", "a", "string"]})
    assert reply.status_code == 422
    body = reply.json()
    assert isinstance(body["detail"], str) and body["errors"]
    jsonschema_rs.validate(documented, body)
    ErrorOut.model_validate(body)


def test_a_route_added_later_is_documented(settings_env):
    from fastapi import Depends

    app = create_app(settings_env, configure_db=False)

    @app.post("/api/v1/widgets/{widget_id}")
    def poke(widget_id: str, payload: dict, who=Depends(require("desktops:write"))) -> dict:
        return {}

    operation = app.openapi()["paths"]["/api/v1/widgets/{widget_id}"]["post"]
    assert set(error_codes(operation)) == {400, 401, 403, 404, 409, 413, 422, 503}
    assert all(reply["content"]["application/json"]["schema"] == ERROR_REF
               for reply in error_codes(operation).values())
