"""What the API fuzz (tests/integration/api/test_schemathesis.py) found, each as a request that gave a 500:
text with a NUL character (Postgres cannot store one) and a username@domain longer than the UPN column."""
from __future__ import annotations

import pytest

API = "/api/v1"


@pytest.mark.parametrize("path, payload, field", [
    ("clusters", {"name": "c-nul", "comment": "a\x00b"}, "comment"),
    ("users", {"username": "nul", "first_name": "x\x00"}, "first_name"),
    ("tags", {"name": "t-nul", "description": "\x00"}, "description"),
])
def test_text_with_a_nul_character_is_invalid(client, path, payload, field):
    reply = client.post(f"{API}/{path}", json=payload)
    assert reply.status_code == 422, reply.text
    assert reply.json()["error"] == "invalid" and f"{field}: Value error, must not contain a NUL" in \
        reply.json()["detail"]
    assert client.get(f"{API}/{path}").json()["total"] == (1 if path == "users" else 0)  # only admin@local


def test_a_nul_inside_a_list_is_invalid(client):
    reply = client.post(f"{API}/desktops/bulk/preview", json={"action": "start", "desktop_ids": ["a\x00"]})
    assert reply.status_code == 422, reply.text


def test_a_username_and_domain_too_long_for_the_upn_are_invalid(client):
    reply = client.post(f"{API}/users", json={"username": "u" * 200, "domain": "d" * 200})
    assert reply.status_code == 422, reply.text
    assert "username@domain must be at most 255 characters" in reply.json()["detail"]
    assert client.post(f"{API}/users", json={"username": "u" * 200, "domain": "d" * 54}).status_code == 201
