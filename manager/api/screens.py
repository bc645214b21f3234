"""A desktop's live screen: the PNG its node captures, for the console's thumbnail (HelpDesk and up)."""
from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query, Response

from manager.api.common import DbSession
from manager.auth import Principal, require
from manager.provisioning.screens import desktop_screenshot

router = APIRouter(tags=["desktops"])


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
