"""GET /metrics: the Prometheus text exposition (manager/metrics.py).

Never anonymous. A scraper sends `Authorization: Bearer <token>` (Prometheus' `authorization` / `bearer_token_file`
scrape setting), either an API token of an account with system:read (HelpDesk and up; make one for a service account
with POST /api/v1/auth/tokens), or VDI_METRICS_TOKEN when it is set: a secret only for the metrics, which needs no
account and no database lookup, so a scrape never writes a token's last use."""
from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import APIRouter, Depends, Request, Response
from sqlalchemy.orm import Session

from manager.auth import _presented_secret, require
from manager.config import get_settings
from manager.db import request_session
from manager.metrics import CONTENT_TYPE_LATEST, exposition

router = APIRouter()
_system_reader = require("system:read")


def metrics_reader(request: Request, session: Annotated[Session, Depends(request_session, scope="function")]) -> None:
    """VDI_METRICS_TOKEN as a bearer token, else a credential with system:read."""
    wanted = get_settings().metrics_token
    secret, from_cookie = _presented_secret(request)
    if wanted and secret and not from_cookie and hmac.compare_digest(secret.encode(), wanted.encode()):
        return
    _system_reader(request, session)


metrics_reader.permission = "system:read"  # type: ignore[attr-defined]  (read by the route audit test)


@router.get("/metrics", include_in_schema=False, dependencies=[Depends(metrics_reader)])
def metrics() -> Response:
    """Every metric in Prometheus' text format."""
    return Response(exposition(), media_type=CONTENT_TYPE_LATEST)
