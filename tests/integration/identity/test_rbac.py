"""The role matrix: each role against each family of routes. Allowed -> anything but 401/403 (and never a
500); denied -> 403. The expected table is written out by hand from the role definitions (SuperUser: all;
DesktopAdmin: everything but users, infrastructure writes and directory sync; HelpDesk: read-only plus power,
console and sessions; User: self-service only), so a change to ROLE_PERMISSIONS that breaks it fails here."""
from __future__ import annotations

import pytest

from core.enums import Role

API = "/api/v1"
S, D, H, U = Role.SUPER_USER, Role.DESKTOP_ADMIN, Role.HELP_DESK, Role.USER

# family -> [(method, path, roles allowed)]
MATRIX: dict[str, list[tuple[str, str, set[Role]]]] = {
    "hosts": [("GET", "/hosts", {S, D, H}), ("POST", "/hosts", {S}), ("POST", "/clusters", {S})],
    "storage": [("GET", "/storage-domains", {S, D, H}), ("POST", "/storage-domains", {S})],
    "templates": [("GET", "/templates", {S, D, H}), ("POST", "/templates", {S, D})],
    "desktops": [("GET", "/desktops", {S, D, H}), ("POST", "/desktops", {S, D})],
    "pools": [("GET", "/pools", {S, D, H}), ("POST", "/pools", {S, D})],
    "users": [("GET", "/users", {S, D, H}), ("POST", "/users", {S}), ("GET", "/groups", {S, D, H}),
              ("POST", "/groups", {S}), ("POST", "/role-assignments", {S}), ("GET", "/role-assignments", {S, D, H})],
    "entitlements": [("GET", "/entitlements", {S, D, H}), ("POST", "/entitlements", {S, D})],
    "events": [("GET", "/events", {S, D, H}), ("GET", "/desktops/none/events", {S, D, H})],
    "alerts": [("GET", "/alerts", {S, D, H}), ("POST", "/alerts/none/acknowledge", {S, D}),
               ("POST", "/alerts/none/resolve", {S, D})],
    "jobs": [("GET", "/jobs", {S, D, H})],
    "dashboard": [("GET", "/dashboard", {S, D, H})],
    "tags": [("GET", "/tags", {S, D, H}), ("POST", "/tags", {S, D})],
    "directory sync": [("POST", "/directory/sync", {S}), ("GET", "/directory/status", {S, D, H})],
    "self": [("GET", "/auth/me", {S, D, H, U}), ("GET", "/users/me/access", {S, D, H, U})],
}
CASES = [(role, family, method, path, role in allowed)
         for family, routes in MATRIX.items() for method, path, allowed in routes for role in (S, D, H, U)]


@pytest.fixture
def tokens(app) -> dict[Role, str]:
    """One local account per role, each holding only that role (User is implied for everyone)."""
    from manager import db
    from manager.auth import issue_token
    from manager.models import RoleAssignment, User

    out = {}
    with db.session_scope() as session:
        for role in (S, D, H, U):
            user = User(username=f"rbac-{role.value.lower()}")
            session.add(user)
            session.flush()
            if role != U:
                session.add(RoleAssignment(user_id=user.id, role=role))
            out[role] = issue_token(session, user, name="rbac")
    return out


@pytest.mark.parametrize("role", [S, D, H, U], ids=lambda r: r.value)
def test_role_matrix(anon_client, tokens, role):
    wrong = []
    for _role, family, method, path, allowed in (c for c in CASES if c[0] == role):
        response = anon_client.request(method, API + path, headers={"Authorization": f"Bearer {tokens[role]}"},
                                       json={} if method == "POST" else None)
        if allowed:
            # 422 (empty body) or 503 (no directory configured) still prove the permission check passed
            ok = response.status_code not in (401, 403) and (response.status_code < 500
                                                              or response.status_code == 503)
        else:
            ok = response.status_code == 403 and response.json()["error"] == "forbidden"
        if not ok:
            wrong.append(f"{family}: {method} {path} -> {response.status_code} "
                         f"(expected {'allowed' if allowed else '403'}) {response.text[:120]}")
    assert wrong == [], f"{role.value}:\n" + "\n".join(wrong)


def test_no_token_is_401_everywhere(anon_client):
    for routes in MATRIX.values():
        for method, path, _allowed in routes:
            response = anon_client.request(method, API + path, json={} if method == "POST" else None)
            assert response.status_code == 401, (method, path, response.text)


def test_every_family_is_covered_for_every_role():
    assert {f for _r, f, *_ in CASES} == set(MATRIX) and len(CASES) == 4 * sum(len(r) for r in MATRIX.values())
    # each role is denied somewhere and allowed somewhere: the matrix can fail in both directions
    for role in (D, H, U):
        assert any(r == role and not a for r, *_x, a in CASES) and any(r == role and a for r, *_x, a in CASES)
