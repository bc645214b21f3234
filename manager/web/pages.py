"""Who may see a page, and how a page answers when they may not.

`viewer(permission)` is the pages' `require(...)`: the same authentication and permission check as the API
(manager.auth), so a page can show nothing the API would refuse. Someone who is not logged in is sent to the
login form (and back afterwards); an error on a page is a page, not JSON.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Annotated
from urllib.parse import quote

from fastapi import Depends, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from sqlalchemy.orm import Session

from core.errors import Forbidden, NotAuthenticated, VdiError
from manager.auth import Principal, authenticate
from manager.db import request_session

WEB_PREFIXES = ("/admin",)
LOGIN_PATH = "/admin/login"


def is_page(request: Request) -> bool:
    return request.url.path.startswith(WEB_PREFIXES)


def viewer(permission: str) -> Callable[..., Principal]:
    """A page dependency: authenticate and check one permission, as manager.auth.require does for the API."""

    def dependency(request: Request, session: Annotated[Session, Depends(request_session, scope="function")]) \
            -> Principal:
        principal = authenticate(request, session)
        if not principal.can(permission):
            raise Forbidden(action=permission.replace(":", " "))
        return principal

    dependency.permission = permission  # type: ignore[attr-defined]  (read by the page audit test)
    dependency.__name__ = f"view_{permission.replace(':', '_')}"
    return dependency


def login_redirect(request: Request) -> RedirectResponse:
    target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    return RedirectResponse(f"{LOGIN_PATH}?next={quote(target, safe='')}", status_code=303)


def error_page(request: Request, status: int, title: str, detail: str) -> HTMLResponse:
    from manager.web.render import page

    return page(request, "error.html", {"title": title, "detail": detail, "status": status}, status=status)


def render_error(request: Request, exc: Exception) -> Response:
    """The page for an error raised while building a page (the API's handlers call this for page paths)."""
    if isinstance(exc, NotAuthenticated) and request.method == "GET":
        return login_redirect(request)
    if isinstance(exc, VdiError):
        titles = {401: "Log in again", 403: "Not allowed", 404: "Not found", 409: "Conflict"}
        return error_page(request, exc.status, titles.get(exc.status, "Cannot show this page"), exc.message)
    return error_page(request, 500, "Something went wrong", str(exc))
