"""What every route shares: the session dependency, paging, the Page shape, and the one error renderer."""
from __future__ import annotations

import logging
import math
import uuid
from typing import Annotated, Any, Generic, Literal, TypeVar

from fastapi import Depends, FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel
from sqlalchemy import Select, func, select
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.orm import Session
from starlette.exceptions import HTTPException as StarletteHTTPException

from core.errors import BadRequest, Invalid, NotFound, VdiError
from manager.db import request_session

log = logging.getLogger("vdi.api")

DbSession = Annotated[Session, Depends(request_session, scope="function")]
T = TypeVar("T")


class Page(BaseModel, Generic[T]):
    items: list[T]
    total: int
    page: int
    per_page: int
    pages: int


class PageParams(BaseModel):
    page: int
    per_page: int
    sort: str | None
    order: Literal["asc", "desc"]


# The deepest page a list serves: (page - 1) * per_page is the database's OFFSET, a 64-bit integer that a
# client-chosen page must not overflow (a 500 from the driver), and no one pages a million pages deep.
MAX_PAGE = 1_000_000
MAX_PER_PAGE = 1000


def page_params(page: Annotated[int, Query(ge=1, le=MAX_PAGE, description="1-based page number")] = 1,
                per_page: Annotated[int, Query(ge=1, le=MAX_PER_PAGE, description="items per page")] = 50,
                sort: Annotated[str | None, Query(description="field to sort by")] = None,
                order: Annotated[Literal["asc", "desc"], Query()] = "asc") -> PageParams:
    return PageParams(page=page, per_page=per_page, sort=sort, order=order)


Paging = Annotated[PageParams, Depends(page_params)]


def paginate(session: Session, stmt: Select, params: PageParams, schema: type[BaseModel], *,
             sortable: dict[str, Any] | None = None, default_order: list[Any] | None = None) -> dict[str, Any]:
    """Run `stmt` one page at a time; sorting only by whitelisted fields (never by a client-supplied name)."""
    order_by = list(default_order or [])
    if params.sort is not None:
        if not sortable or params.sort not in sortable:
            allowed = ", ".join(sorted(sortable or {})) or "nothing"
            raise BadRequest(f"cannot sort by {params.sort!r}; sortable fields: {allowed}")
        column = sortable[params.sort]
        order_by = [column.desc() if params.order == "desc" else column.asc(), *order_by]
    total = session.scalar(select(func.count()).select_from(stmt.order_by(None).subquery())) or 0
    rows = session.scalars(stmt.order_by(*order_by).offset((params.page - 1) * params.per_page)
                           .limit(params.per_page)).all()
    return {
        "items": [schema.model_validate(r) for r in rows],
        "total": total,
        "page": params.page,
        "per_page": params.per_page,
        "pages": math.ceil(total / params.per_page) if total else 0,
    }


# ---- errors ---------------------------------------------------------------------------------------
def _validation_message(exc: RequestValidationError) -> str:
    parts = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err.get("loc", ()) if p not in ("body",))
        parts.append(f"{loc or 'request'}: {err.get('msg', 'invalid')}")
    return "; ".join(parts) or "invalid request"


def install_error_handlers(app: FastAPI) -> None:
    from manager.web.pages import is_page, render_error

    @app.exception_handler(VdiError)
    async def _vdi_error(request: Request, exc: VdiError) -> Response:
        if exc.status >= 500 and not exc.expected:
            log.error("unexpected %s: %s", exc.code, exc.message)
        if is_page(request):
            return render_error(request, exc)
        return JSONResponse(exc.to_dict(), status_code=exc.status, headers=getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> Response:
        if is_page(request):
            return render_error(request, Invalid(_validation_message(exc)))
        errors = [{"loc": list(e.get("loc", ())), "msg": e.get("msg", "")} for e in exc.errors()]
        return JSONResponse({"error": "invalid", "detail": _validation_message(exc), "errors": errors},
                            status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> Response:
        if is_page(request) and exc.status_code == 404:
            return render_error(request, NotFound("no such page"))
        code = {404: "not_found", 405: "method_not_allowed", 401: "not_authenticated", 403: "forbidden",
                413: "too_large"}.get(
            exc.status_code, "http_error")
        detail = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
        if exc.status_code == 404 and detail == "Not Found":
            detail = "no such endpoint; see /docs for the API"
        return JSONResponse({"error": code, "detail": detail}, status_code=exc.status_code,
                            headers=getattr(exc, "headers", None))

    @app.exception_handler(IntegrityError)
    async def _integrity(_request: Request, exc: IntegrityError) -> JSONResponse:
        log.info("integrity error: %s", exc.orig)
        return JSONResponse({"error": "conflict",
                             "detail": "the change conflicts with existing data (a duplicate, or an object "
                                       "still in use); reload and try again"}, status_code=409)

    @app.exception_handler(OperationalError)
    async def _db_down(_request: Request, exc: OperationalError) -> JSONResponse:
        log.error("database error: %s", exc.orig)
        return JSONResponse({"error": "unavailable", "detail": "the database is unavailable; try again shortly"},
                            status_code=503)

    async def _unexpected(request: Request, exc: Exception) -> Response:
        incident = uuid.uuid4().hex[:12]
        log.exception("unhandled error (incident %s)", incident)
        if is_page(request):
            return render_error(request, VdiError(f"internal error; the manager log has incident {incident}"))
        return JSONResponse({"error": "internal", "detail": f"internal error; the manager log has incident {incident}"},
                            status_code=500)

    app.add_middleware(CatchAll, handler=_unexpected)


class CatchAll:
    """Turns an exception nothing else handled into `handler`'s answer (a 500 naming an incident, logged once).
    Not registered as Starlette's `Exception` handler: that one runs in ServerErrorMiddleware, which sends the
    answer and then re-raises, so uvicorn logs the error a second time and closes the keep-alive connection,
    failing the client's next request on it. Here the exception ends with the answer."""

    def __init__(self, app: Any, *, handler: Any) -> None:
        self.app, self.handler = app, handler

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def send_tracked(message: dict[str, Any]) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, send_tracked)
        except Exception as exc:
            if started:  # half an answer is out: only closing the connection tells the client (uvicorn logs it)
                raise
            response = await self.handler(Request(scope, receive), exc)
            await response(scope, receive, send)
