"""The login form and logout, for every page: the admin console and the self-service portal. Without a page to go
back to, a login lands where the account belongs: administrators on the console, everyone else on the portal."""
from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse

from core.errors import VdiError
from manager.api.common import DbSession
from core.enums import Role
from core.errors import NotAuthenticated
from manager.auth import authenticate, end_browser_session, roles_of, start_browser_session
from manager.web.pages import LOGIN_PATH
from manager.web.render import page

router = APIRouter()
ADMIN_HOME = "/admin"
PORTAL_HOME = "/portal"


def safe_next(target: str | None) -> str:
    """Only a path on this site: never an absolute URL or a scheme-relative //host (an open redirect). "" when
    there is none: the login then lands on the account's home (home_for)."""
    if not target or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return ""
    return target


def home_for(session, user_id: str) -> str:
    """Where an account lands: administrators (any role beyond User) on the console, everyone else on the portal."""
    return ADMIN_HOME if roles_of(session, user_id) - {Role.USER} else PORTAL_HOME


@router.get(LOGIN_PATH, response_class=HTMLResponse, include_in_schema=False)
def login_form(request: Request, next: str = "") -> HTMLResponse:  # noqa: A002  (the usual parameter name)
    return page(request, "login.html", {"next": safe_next(next), "error": None, "username": ""})


@router.post(LOGIN_PATH, include_in_schema=False)
def login_submit(request: Request, session: DbSession, username: Annotated[str, Form(max_length=512)] = "",
                 password: Annotated[str, Form(max_length=1024)] = "", next: Annotated[str, Form()] = ""):  # noqa: A002
    target = safe_next(next)
    if not username or not password:
        return page(request, "login.html", {"next": target, "error": "Enter your user name and password.",
                                            "username": username}, status=422)
    response = RedirectResponse(target or PORTAL_HOME, status_code=303)
    try:
        user, _secret = start_browser_session(session, request, response, username, password)
    except VdiError as exc:
        session.commit()  # keep the record of the failure (throttling counts it)
        return page(request, "login.html", {"next": target, "error": exc.message, "username": username},
                    status=exc.status)
    if not target:
        response.headers["location"] = home_for(session, user.id)
    return response


@router.get("/", include_in_schema=False)
def root(request: Request, session: DbSession) -> RedirectResponse:
    """The site's front door: the login form for a stranger, the account's home otherwise."""
    try:
        who = authenticate(request, session)
    except NotAuthenticated:
        return RedirectResponse(LOGIN_PATH, status_code=303)
    return RedirectResponse(home_for(session, who.user_id), status_code=303)


@router.post("/admin/logout", include_in_schema=False)
def logout(request: Request, session: DbSession, csrf_token: Annotated[str, Form()] = ""):
    authenticate(request, session, csrf=csrf_token)
    response = RedirectResponse(LOGIN_PATH, status_code=303)
    end_browser_session(session, request, response)
    return response
