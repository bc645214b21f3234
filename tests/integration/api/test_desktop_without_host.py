"""A desktop on no host (never placed, or its host was removed) cannot run: starting it, or connecting to it, is
a 409 that says what to do, not a 503 as if a service were down for a while (issue 22 item 11)."""
from __future__ import annotations

API = "/api/v1"


def _unplaced_desktop_for(user_name: str) -> tuple[str, str]:
    """(desktop id, the user's token): a desktop with no host, entitled to a plain user."""
    from manager import db
    from manager.auth import issue_token
    from manager.models import Desktop, Entitlement, User

    with db.session_scope() as s:
        desktop, user = Desktop(name="hostless-1"), User(username=user_name, domain="local")
        s.add_all([desktop, user])
        s.flush()
        s.add(Entitlement(desktop_id=desktop.id, user_id=user.id))
        return desktop.id, issue_token(s, user, name="tests")


def test_starting_or_connecting_to_a_desktop_on_no_host_is_a_409_saying_what_to_do(client, anon_client):
    desktop_id, token = _unplaced_desktop_for("nora")
    started = client.post(f"{API}/desktops/{desktop_id}/start")
    connected = anon_client.post(f"{API}/broker/connect", headers={"Authorization": f"Bearer {token}"},
                                 json={"desktop_id": desktop_id, "client": {"protocols": ["spice"]}})
    for answer in (started, connected):
        assert answer.status_code == 409, answer.text
        body = answer.json()
        assert body["error"] == "not_placed" and "hostless-1" in body["detail"], body
        assert "provision it again" in body["detail"], body
    # the refused start left nothing claimed: the desktop is idle and can be acted on
    assert client.get(f"{API}/desktops/{desktop_id}").json()["task_state"] is None
