"""A desktop's live screen and keyboard: the PNG its node captures, for the console's thumbnail, and keys pressed
on it (Send Ctrl+Alt+Del), for HelpDesk and up; a user's own desktops' keys are under /me (manager/api/broker.py)."""
from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query, Response
from pydantic import Field

from manager.api import schemas as s
from manager.api.common import DbSession
from manager.api.openapi import NODE_ERRORS
from manager.auth import Principal, require
from manager.provisioning.screens import KEYCODES, MAX_KEYS, desktop_screenshot, send_keys

router = APIRouter(tags=["desktops"])


class KeysIn(s.In):
    keys: Annotated[list[Annotated[str, Field(max_length=32)]], Field(
        min_length=1, max_length=MAX_KEYS, examples=[["ctrl", "alt", "delete"]],
        description=f"key names pressed together, then released; one of: {', '.join(KEYCODES)}")]


class KeysOut(s.Out):
    desktop_id: str
    keys: list[str]


@router.get("/desktops/{desktop_id}/screenshot", response_class=Response,
            responses={200: {"content": {"image/png": {}}, "description": "the display as PNG"},
                       409: {"description": "the desktop is not running"},
                       502: {"description": "the node failed to capture the display"},
                       503: {"description": "the desktop's host cannot be reached"}})
def screenshot(desktop_id: str, session: DbSession, who: Annotated[Principal, Depends(require("desktops:console"))],
               screen: Annotated[int, Query(ge=0, le=15, description="which display (0: the first)")] = 0) -> Response:
    """What the desktop's display shows now, as PNG (needs desktops:console: it shows the user's screen)."""
    return Response(desktop_screenshot(session, desktop_id, screen), media_type="image/png",
                    headers={"Cache-Control": "no-store"})


@router.post("/desktops/{desktop_id}/send-keys", response_model=KeysOut, responses=NODE_ERRORS)
def send_desktop_keys(desktop_id: str, body: KeysIn, session: DbSession,
                      who: Annotated[Principal, Depends(require("desktops:console"))]) -> KeysOut:
    """Press keys together on the running desktop's keyboard, e.g. ["ctrl", "alt", "delete"] for a guest waiting
    at a lock screen (needs desktops:console: it types on the user's screen). 422 names unknown keys, 409 when the
    desktop is not running. Recorded as an event."""
    return KeysOut(desktop_id=desktop_id, keys=send_keys(session, desktop_id, body.keys, actor=who.name))
