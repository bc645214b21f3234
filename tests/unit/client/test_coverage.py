"""Every operation of the manager's API has a method in vdi_client (issue 19 item 3), and every client method
calls an operation the API has: both read from the OpenAPI document of the app object, no server needed."""
from __future__ import annotations

import re

import pytest

from vdi_client.client import API, Client, Namespace, operation

# Operations no client of people or scripts calls, and why.
NOT_FOR_CLIENTS = {
    ("POST", "/nodes/{id}/heartbeat"): "the node agent's report, authenticated by its node token",
    ("POST", "/nodes/{id}/console-events"): "the node agent's report, authenticated by its node token",
}
# Client methods written ahead of the server (issue 19's other items); each entry goes when the server has it.
AHEAD_OF_SERVER: dict[tuple[str, str], str] = {}


def client_operations(client_class: type[Client] = Client) -> dict[tuple[str, str], str]:
    """(METHOD, path below /api/v1 with every parameter written `{id}`) → the client method calling it."""
    found: dict[tuple[str, str], str] = {}
    for attribute, namespace in client_class.NAMESPACES.items():
        for name in dir(namespace):
            mark = getattr(getattr(namespace, name), "__vdi_operation__", None)
            if mark is None:
                continue
            method, path = mark
            path = path.replace("{collection}", namespace.collection)
            found[(method, re.sub(r"\{[^}]+\}", "{id}", path))] = f"{attribute}.{name}"
    return found


def api_operations() -> dict[tuple[str, str], str]:
    from manager.app import create_app

    document = create_app().openapi()
    found = {}
    for path, operations in document["paths"].items():
        for method, spec in operations.items():
            if method.upper() not in {"GET", "POST", "PUT", "PATCH", "DELETE"}:
                continue
            key = (method.upper(), re.sub(r"\{[^}]+\}", "{id}", path.removeprefix(API)))
            found[key] = spec.get("operationId", "")
    return found


@pytest.fixture(scope="module")
def api() -> dict[tuple[str, str], str]:
    return api_operations()


def test_every_api_operation_has_a_client_method(api):
    covered = client_operations()
    missing = sorted(set(api) - set(covered) - set(NOT_FOR_CLIENTS))
    assert not missing, ("API operations without a vdi_client method (add one, marked "
                         "@operation(METHOD, PATH), to the namespace in vdi_client/client.py):\n"
                         + "\n".join(f"  {method} {API}{path}  ({api[(method, path)]})" for method, path in missing))


def test_every_client_method_calls_an_api_operation(api):
    covered = client_operations()
    unknown = sorted(set(covered) - set(api) - set(AHEAD_OF_SERVER))
    assert not unknown, "client methods calling operations the API does not have:\n" + "\n".join(
        f"  {covered[key]}: {key[0]} {API}{key[1]}" for key in unknown)
    landed = sorted(set(AHEAD_OF_SERVER) & set(api))
    assert not landed, f"the server has these now; take them out of AHEAD_OF_SERVER: {landed}"
    stale = sorted(set(NOT_FOR_CLIENTS) - set(api))
    assert not stale, f"NOT_FOR_CLIENTS names operations the API no longer has: {stale}"


def test_the_check_sees_a_missing_method():
    """The registry reads the marks of a namespace's methods: one more namespace adds its operation, and a
    namespace without the mark adds nothing (so a new endpoint with no marked method stays missing)."""

    class Extra(Namespace):
        @operation("POST", "/widgets/{widget_id}/spin")
        def spin(self, widget_id: str) -> None:
            """Marked."""

        def unmarked(self) -> None:
            """Not an operation."""

    class Wider(Client):
        NAMESPACES = {**Client.NAMESPACES, "extra": Extra}

    assert set(client_operations(Wider)) - set(client_operations()) == {("POST", "/widgets/{id}/spin")}
    assert client_operations(Wider)[("POST", "/widgets/{id}/spin")] == "extra.spin"


def test_the_client_imports_no_manager_code():
    """vdi_client runs wherever a script does: the standard library, httpx and pydantic only (docs/DEVELOPING.md)."""
    import sys

    from tests.unit.test_architecture import imported_modules, top

    allowed = {"vdi_client", "httpx", "pydantic", "__future__"} | set(sys.stdlib_module_names)
    assert [(f, mod) for f, mod in imported_modules("vdi_client") if top(mod) not in allowed] == []
