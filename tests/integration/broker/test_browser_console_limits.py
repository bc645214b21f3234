"""The browser console's time limits on a real guest, through a real `vdi serve`: a console whose user sends no
keyboard or pointer input is closed after VDI_CONSOLE_IDLE_SECONDS (the viewer's own update requests do not count
as input), and one in active use is closed at VDI_CONSOLE_MAX_SECONDS all the same. Both consoles are open at once,
so the test lasts about the maximum (the smallest the settings allow: 10 s idle, 60 s in all)."""
from __future__ import annotations

import asyncio
import struct
import time

import pytest
from websockets.exceptions import ConnectionClosed

from tests.harness.console_viewer import Refused, console_url, open_viewer
from tests.integration.broker.test_browser_console import login, ticket

pytestmark = [pytest.mark.libvirt, pytest.mark.slow, pytest.mark.postgres]
IDLE_S = 10
MAX_S = 60
CLOSE_LIMIT = 4408
GIVE_UP_S = MAX_S + 120  # a bound so a broken limit fails the test instead of hanging it; not a speed assertion


@pytest.fixture(scope="module")
def limited_manager():
    from tests.e2e.server import manager_with_real_guests
    from tests.harness.postgres import PostgresUnavailable

    try:
        with manager_with_real_guests("vdi-console-limits", env={"VDI_CONSOLE_IDLE_SECONDS": str(IDLE_S),
                                                                 "VDI_CONSOLE_MAX_SECONDS": str(MAX_S)}) as server:
            yield server
    except PostgresUnavailable as exc:  # raised before the yield only
        pytest.fail(str(exc))


async def _until_closed(url: str, *, moves_pointer: bool) -> tuple[Refused, float]:
    viewer = await open_viewer(url)
    _, init = await viewer.handshake()
    opened = time.monotonic()
    x = 0
    while time.monotonic() - opened < GIVE_UP_S:
        try:
            if moves_pointer:  # RFB PointerEvent: type 5, no button, a position that changes
                x = (x + 7) % init.width
                await viewer.ws.send(struct.pack(">BBHH", 5, 0, x, init.height // 2))
            await viewer.request_update(init.width, init.height, incremental=True)
            await asyncio.wait_for(viewer.drain_messages(), timeout=2)
        except asyncio.TimeoutError:
            continue  # nothing changed on the screen: ask again
        except Refused as closed:
            return closed, time.monotonic() - opened
        except ConnectionClosed as exc:  # the close came while sending
            return Refused.of(exc), time.monotonic() - opened
        await asyncio.sleep(1)
    raise AssertionError(f"the console was still open after {GIVE_UP_S} s")


async def _both(idle_url: str, active_url: str):
    return await asyncio.gather(_until_closed(idle_url, moves_pointer=False),
                                _until_closed(active_url, moves_pointer=True))


def test_idle_and_maximum_limits_close_the_console(limited_manager):
    carol = login(limited_manager, "carol@local")
    try:
        (desk,) = [d for d in carol.get("/me/desktops").json() if d["name"] == "carol-finance"]
        urls = [console_url(limited_manager.base_url, got["ws_path"], got["ticket"])
                for got in (ticket(carol, desk["id"]), ticket(carol, desk["id"]))]
    finally:
        carol.close()

    (idle, idle_after), (active, active_after) = asyncio.run(_both(*urls))

    assert (idle.code, idle.reason) == (CLOSE_LIMIT, f"idle for {IDLE_S} s")
    assert (active.code, active.reason) == (CLOSE_LIMIT, f"open for the maximum of {MAX_S} s")
    # Ordering, not speed: the idle console went first, and the active one outlived the idle limit.
    assert idle_after >= IDLE_S and active_after >= MAX_S > idle_after
    events = limited_manager.admin_api.get("/events", params={"desktop_id": desk["id"],
                                                               "code": "console.browser_close"}).json()["items"]
    reasons = " | ".join(e["message"] for e in events)
    assert f"idle for {IDLE_S} s" in reasons and f"maximum of {MAX_S} s" in reasons, reasons
