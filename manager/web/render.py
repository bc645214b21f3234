"""Rendering pages: one Jinja2 environment, the context every page gets, and the formats pages share."""
from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from fastapi import Request
from fastapi.responses import HTMLResponse
from jinja2 import Environment, FileSystemLoader, select_autoescape

from manager.auth import Principal, csrf_token

TEMPLATES = Path(__file__).parent / "templates"
STATIC_URL = "/static/console"

env = Environment(loader=FileSystemLoader(TEMPLATES), autoescape=select_autoescape(["html"]),
                  trim_blocks=True, lstrip_blocks=True)


def when(value: dt.datetime | None) -> str:
    """A timestamp as an administrator reads it: UTC, to the second."""
    if value is None:
        return "—"
    if value.tzinfo is not None:
        value = value.astimezone(dt.timezone.utc)
    return value.strftime("%Y-%m-%d %H:%M:%S")


def mib(value: int | None) -> str:
    if value is None:
        return "—"
    return f"{value / 1024:.1f} GiB" if value >= 1024 else f"{value} MiB"


def size_bytes(value: int | None) -> str:
    if value is None:
        return "—"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return str(value)


def enum_text(value: Any) -> str:
    if value is None:
        return "—"
    return str(getattr(value, "value", value)).replace("_", " ")


env.filters.update(when=when, mib=mib, size_bytes=size_bytes, enum_text=enum_text)
env.globals.update(static=STATIC_URL, urlencode=urlencode)


def session_csrf(request: Request) -> str:
    """The CSRF token of the browser session this request came with ("" without one)."""
    from manager.auth import SESSION_COOKIE

    secret = request.cookies.get(SESSION_COOKIE)
    return csrf_token(secret) if secret else ""


def page(request: Request, template: str, context: dict[str, Any] | None = None, *, status: int = 200,
         who: Principal | None = None) -> HTMLResponse:
    """Render `template` with what every page needs: the request, who is asking (the layout shows only what
    they may do), the CSRF token for the page's scripts and forms."""
    ctx = {"request": request, "who": who, "csrf": session_csrf(request), "path": request.url.path}
    ctx.update(context or {})
    return HTMLResponse(env.get_template(template).render(ctx), status_code=status,
                        headers={"Cache-Control": "no-store"})
