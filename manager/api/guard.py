"""What every request passes before the application reads its body: a credential, and a size limit.

FastAPI reads and parses a route's body before it runs the route's dependencies (require), so without this a
stranger's body would be read whole, and a malformed one answered with 422, before anyone asked who sent it.
`RequestGuard`, a pure ASGI middleware, answers first:

* an API request without a credential (bearer token or session cookie) to a route not declared public() is a
  401, its body unread. Only presence is checked here, without a database round trip; the route's require()
  checks the credential itself, and the size limit bounds what a request with a wrong one can make us read;
* a body larger than `max_body` is a 413 (`TooLarge`, naming the limit): at once when its Content-Length says
  so, else as soon as the bytes received pass the limit, which are all that is read. A route that declares a
  `max_body_size` of its own (the image upload, which streams to disk under settings.max_upload_bytes) is
  left to that limit.

The route lists (public, own limit) are asked once, at start-up (the lifespan passes through here), or on the
first request that needs them where no lifespan runs; every route exists by then.
"""
from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException
from starlette.routing import compile_path

from core.errors import NotAuthenticated, TooLarge, VdiError
from manager.auth import _presented_secret


class BodyTooLarge(HTTPException):
    """Raised from receive() when the body passes the limit: FastAPI passes an HTTPException raised while it
    reads a body on to the exception handlers (any other error becomes a 400 'error parsing the body')."""

    def __init__(self, limit: int) -> None:
        super().__init__(status_code=413, detail=TooLarge(limit=limit).message)


def api_routes(app: FastAPI) -> Iterator[tuple[str, Any]]:
    """(full path, route) for every route of `app`, also inside included routers (which FastAPI resolves
    lazily, prefixes included)."""
    def walk(routes: list[Any]) -> Iterator[tuple[str, Any]]:
        for route in routes:
            if hasattr(route, "effective_candidates"):
                yield from walk(route.effective_candidates())
            else:
                yield getattr(route, "path", ""), getattr(route, "original_route", route)

    return walk(app.routes)


def _paths(app: FastAPI, keep: Callable[[Any], bool]) -> list[re.Pattern[str]]:
    return [compile_path(path)[0] for path, route in api_routes(app) if path and keep(route)]


def _is_public(route: Any) -> bool:
    dependant = getattr(route, "dependant", None)
    return dependant is not None and any(getattr(dep.call, "permission", None) == "public"
                                         for dep in dependant.dependencies)


def _own_limit(route: Any) -> bool:
    return getattr(route, "max_body_size", None) is not None


class RequestGuard:
    def __init__(self, app: Any, *, fastapi_app: FastAPI, prefix: str, max_body: int) -> None:
        self.app = app
        self.fastapi_app = fastapi_app
        self.prefix = prefix
        self.max_body = max_body
        self._public: list[re.Pattern[str]] | None = None
        self._own_limit: list[re.Pattern[str]] | None = None

    def _matches(self, attribute: str, keep: Callable[[Any], bool], path: str) -> bool:
        patterns = getattr(self, attribute)
        if patterns is None:
            patterns = _paths(self.fastapi_app, keep)
            setattr(self, attribute, patterns)
        return any(pattern.match(path) for pattern in patterns)

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            if scope["type"] == "lifespan":
                # Learn the routes at start-up (every route exists by then), not in the first requests' time: it
                # takes FastAPI a quarter of a second of CPU, which a storm's first connects would wait for.
                self._matches("_public", _is_public, "")
                self._matches("_own_limit", _own_limit, "")
            await self.app(scope, receive, send)
            return
        path = scope["path"]
        if path.startswith(self.prefix) and not _presented_secret(Request(scope))[0] \
                and not self._matches("_public", _is_public, path):
            await _answer(NotAuthenticated(), scope, receive, send)
            return
        if self._matches("_own_limit", _own_limit, path):
            await self.app(scope, receive, send)
            return
        limit = self.max_body
        declared = Request(scope).headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            await _answer(TooLarge(limit=limit), scope, receive, send)
            return
        received = 0

        async def limited_receive() -> dict[str, Any]:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise BodyTooLarge(limit)
            return message

        await self.app(scope, limited_receive, send)


async def _answer(error: VdiError, scope: dict[str, Any], receive: Any, send: Any) -> None:
    """The error as the API renders it (VdiError.to_dict), without reading the request's body."""
    await JSONResponse(error.to_dict(), status_code=error.status)(scope, receive, send)
