"""The browser console's ticket and proxy against a real guest: `vdi demo` boots carol-finance as a real QEMU guest,
`vdi serve` runs the proxy, and a WebSocket client speaking RFB (tests.harness.console_viewer, as noVNC does) gets
the guest's ServerInit through it. Refused: bob with carol's desktop, a replayed ticket, an expired one, an unknown
one. An administrator's disconnect closes a live console. Every step is in the event log."""
from __future__ import annotations

import asyncio
import contextlib
import time

import httpx
import pytest
from sqlalchemy import text

from manager.db import make_engine
from manager.demo import DEMO_PASSWORD
from tests.harness.console_viewer import Refused, console_url, open_viewer
from tests.harness.fixtures import real_guest_manager  # noqa: F401 (a fixture)
from tests.harness.managers import wait_for

pytestmark = [pytest.mark.libvirt, pytest.mark.slow, pytest.mark.postgres]
CLOSE_REFUSED = 4401
CLOSE_ADMIN = 4409


def login(server, username: str) -> httpx.Client:
    client = httpx.Client(base_url=f"{server.base_url}/api/v1", timeout=180)
    token = client.post("/auth/login", json={"username": username, "password": DEMO_PASSWORD}).json()["token"]
    client.headers["Authorization"] = f"Bearer {token}"
    return client


@pytest.fixture(scope="module")
def carol(real_guest_manager):
    client = login(real_guest_manager, "carol@local")
    yield client
    client.close()


@pytest.fixture(scope="module")
def carol_desktop(carol) -> str:
    (desk,) = [d for d in carol.get("/me/desktops").json() if d["name"] == "carol-finance"]
    return desk["id"]


def ticket(client: httpx.Client, desktop_id: str) -> dict:
    answer = client.post("/broker/browser-console", json={"desktop_id": desktop_id})
    assert answer.status_code == 200, answer.text
    return answer.json()


async def _handshake(url: str):
    viewer = await open_viewer(url)
    try:
        return await viewer.handshake()
    finally:
        await viewer.ws.close()


def handshake(server, got: dict):
    return asyncio.run(_handshake(console_url(server.base_url, got["ws_path"], got["ticket"])))


def refusal(server, got: dict) -> Refused:
    with pytest.raises(Refused) as refused:
        handshake(server, got)
    return refused.value


def test_a_ticket_opens_the_guests_display_once(real_guest_manager, carol, carol_desktop):
    got = ticket(carol, carol_desktop)
    assert got["desktop_name"] == "carol-finance" and got["session_id"]
    assert "password" not in got and "port" not in got  # the browser never learns the guest's display
    version, init = handshake(real_guest_manager, got)
    assert version == b"RFB 003.008\n"
    assert init.width > 0 and init.height > 0 and init.bits_per_pixel in (16, 32)
    assert init.name  # QEMU names its display after the domain

    replay = refusal(real_guest_manager, got)
    assert (replay.code, replay.reason) == (CLOSE_REFUSED, "console ticket already used")

    events = real_guest_manager.admin_api.get("/events", params={"desktop_id": carol_desktop,
                                                                  "per_page": 100}).json()["items"]
    codes = [e["code"] for e in events]
    for code in ("console.browser_open", "console.browser_close", "console.browser_refused", "console.ticket"):
        assert code in codes, codes
    assert not any(got["ticket"] in e["message"] for e in events)


def test_bob_cannot_reach_carols_console(real_guest_manager, carol_desktop):
    with contextlib.closing(login(real_guest_manager, "bob@local")) as bob:
        assert bob.post("/broker/browser-console", json={"desktop_id": carol_desktop}).status_code == 404
        assert bob.post(f"/desktops/{carol_desktop}/browser-console").status_code == 403
        assert bob.post(f"/desktops/{carol_desktop}/browser-console/disconnect").status_code == 403


def test_expired_and_unknown_tickets_are_refused(real_guest_manager, carol, carol_desktop):
    got = ticket(carol, carol_desktop)
    engine = make_engine(real_guest_manager.database_url)
    with engine.begin() as conn:  # as if VDI_TICKET_SECONDS had passed
        conn.execute(text("UPDATE browser_consoles SET expires_at = now() - interval '1 second' "
                          "WHERE opened_at IS NULL"))
    engine.dispose()
    expired = refusal(real_guest_manager, got)
    assert (expired.code, expired.reason) == (CLOSE_REFUSED, "console ticket expired")
    unknown = refusal(real_guest_manager, {**got, "ticket": "not-a-ticket"})
    assert (unknown.code, unknown.reason) == (CLOSE_REFUSED, "unknown console ticket")


async def _held_open_until_closed(url: str, disconnect) -> Refused:
    viewer = await open_viewer(url)
    _, init = await viewer.handshake()
    await viewer.request_update(init.width, init.height, incremental=False)
    await asyncio.to_thread(disconnect)
    deadline = time.monotonic() + 60
    try:
        while time.monotonic() < deadline:
            await viewer.drain_messages()
            await viewer.request_update(init.width, init.height, incremental=True)
    except Refused as closed:
        return closed
    raise AssertionError("the console stayed open after the administrator's disconnect")


def test_an_administrator_disconnects_a_live_console(real_guest_manager, carol, carol_desktop):
    got = ticket(carol, carol_desktop)

    def disconnect():
        answer = real_guest_manager.admin_api.post(f"/desktops/{carol_desktop}/browser-console/disconnect")
        assert answer.status_code == 200 and answer.json()["closed"] == 1, answer.text

    url = console_url(real_guest_manager.base_url, got["ws_path"], got["ticket"])
    closed = asyncio.run(_held_open_until_closed(url, disconnect))
    assert (closed.code, closed.reason) == (CLOSE_ADMIN, "disconnected by an administrator")

    def close_event():  # the proxy records the close after the socket has closed: wait for it, do not race it
        events = real_guest_manager.admin_api.get("/events", params={"desktop_id": carol_desktop,
                                                                      "per_page": 50}).json()["items"]
        return next((e for e in events if e["code"] == "console.browser_close" and "administrator" in e["message"]),
                    None)

    wait_for("the console.browser_close event naming the administrator", close_event, bound_s=30)


def test_an_administrators_console_of_carols_desktop(real_guest_manager, carol_desktop):
    answer = real_guest_manager.admin_api.post(f"/desktops/{carol_desktop}/browser-console")
    assert answer.status_code == 200, answer.text
    got = answer.json()
    assert got["session_id"] == ""
    _, init = handshake(real_guest_manager, got)
    assert init.width > 0
