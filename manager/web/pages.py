"""How a page answers someone who may not see it.

Pages declare who may see them with the API's own `manager.auth.require(permission)`, so a page can show nothing
the API would refuse. Someone who is not logged in is sent to the login form (and back afterwards); any other
error on a page is a page, not JSON (manager.api.common's handlers call render_error for page paths).
"""
from __future__ import annotations

from urllib.parse import quote

from fastapi import Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from core.errors import NotAuthenticated, VdiError

WEB_PREFIXES = ("/admin", "/portal")
LOGIN_PATH = "/admin/login"


def is_page(request: Request) -> bool:
    return request.url.path.startswith(WEB_PREFIXES)


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
