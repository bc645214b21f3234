"""The login form and logout, for every page (the admin console and, next, the portal)."""
from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse

from core.errors import VdiError
from manager.api.common import DbSession
from manager.auth import authenticate, end_browser_session, start_browser_session
from manager.web.pages import LOGIN_PATH
from manager.web.render import page

router = APIRouter()
HOME = "/admin"


def safe_next(target: str | None) -> str:
    """Only a path on this site: never an absolute URL or a scheme-relative //host (an open redirect)."""
    if not target or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return HOME
    return target


@router.get(LOGIN_PATH, response_class=HTMLResponse, include_in_schema=False)
def login_form(request: Request, next: str = HOME) -> HTMLResponse:  # noqa: A002  (the usual parameter name)
    return page(request, "login.html", {"next": safe_next(next), "error": None, "username": ""})


@router.post(LOGIN_PATH, include_in_schema=False)
def login_submit(request: Request, session: DbSession, username: Annotated[str, Form(max_length=512)] = "",
                 password: Annotated[str, Form(max_length=1024)] = "", next: Annotated[str, Form()] = HOME):  # noqa: A002
    target = safe_next(next)
    if not username or not password:
        return page(request, "login.html", {"next": target, "error": "Enter your user name and password.",
                                            "username": username}, status=422)
    response = RedirectResponse(target, status_code=303)
    try:
        start_browser_session(session, request, response, username, password)
    except VdiError as exc:
        session.commit()  # keep the record of the failure (throttling counts it)
        return page(request, "login.html", {"next": target, "error": exc.message, "username": username},
                    status=exc.status)
    return response


@router.post("/admin/logout", include_in_schema=False)
def logout(request: Request, session: DbSession, csrf_token: Annotated[str, Form()] = ""):
    authenticate(request, session, csrf=csrf_token)
    response = RedirectResponse(LOGIN_PATH, status_code=303)
    end_browser_session(session, request, response)
    return response
