"""The managers a node agent reports to: several `vdi serve` instances share one database and any of them takes
heartbeats and console events (docs/ha.md). The agent is given all their URLs (`--manager URL1,URL2`), sends to
one, and moves on to the next when that one cannot be reached or answers with a server error; the one that
answered stays the one used until it fails in turn. EpochFence keeps a former leader manager's commands out."""
from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import httpx
from starlette.datastructures import Headers
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from core.errors import Invalid
from core.specs import LEADER_EPOCH_HEADER

log = logging.getLogger("hypervisor_node.managers")


def parse_manager_urls(value: str | Sequence[str]) -> list[str]:
    """'http://a:8000, http://b:8000/' or a list -> ['http://a:8000', 'http://b:8000'] (empty parts dropped)."""
    parts = value.split(",") if isinstance(value, str) else list(value)
    urls = [part.strip().rstrip("/") for part in parts if part and part.strip()]
    for url in urls:
        if not url.startswith(("http://", "https://")):
            raise Invalid(f"a manager URL starts with http:// or https://, got {url!r}")
    return urls


class ManagerEndpoints:
    """The managers' base URLs and the one in use. One instance is shared by everything in the agent that posts to
    the manager, so they all follow a failover."""

    def __init__(self, urls: str | Sequence[str]) -> None:
        self.urls = parse_manager_urls(urls)
        if not self.urls:
            raise Invalid("no manager URL given")
        self.index = 0

    @classmethod
    def of(cls, value: "str | Sequence[str] | ManagerEndpoints") -> "ManagerEndpoints":
        return value if isinstance(value, ManagerEndpoints) else cls(value)

    @property
    def current(self) -> str:
        return self.urls[self.index]

    async def post(self, client: httpx.AsyncClient, path: str, **kwargs: Any) -> httpx.Response:
        """POST `path` to the current manager, else to each other one in turn (once each). Returns the first answer
        that is not a server error (4xx included: another manager would say the same), else the last server error;
        raises the last httpx.HTTPError when no manager could be reached."""
        failure: httpx.HTTPError | None = None
        answer: httpx.Response | None = None
        for step in range(len(self.urls)):
            index = (self.index + step) % len(self.urls)
            try:
                response = await client.post(f"{self.urls[index]}{path}", **kwargs)
            except httpx.HTTPError as exc:
                failure = exc
                continue
            if response.status_code >= 500:
                answer = response
                continue
            if index != self.index:
                log.warning("manager %s did not answer; the agent now reports to %s", self.current, self.urls[index])
                self.index = index
            return response
        if answer is not None:
            return answer
        assert failure is not None
        raise failure


class EpochFence:
    """The highest leader epoch this agent has heard of (from heartbeat replies and from the calls of a leader's
    singleton loops, which carry theirs in LEADER_EPOCH_HEADER). A command carrying an older epoch comes from a
    manager that has lost the leadership since (paused, partitioned) and is refused; calls without the header
    (a user's action through any manager) are not concerned."""

    def __init__(self) -> None:
        self.highest: int | None = None

    def learn(self, epoch: object) -> None:
        if isinstance(epoch, int) and not isinstance(epoch, bool) and epoch > (self.highest or 0):
            if self.highest is not None:
                log.info("manager leader epoch %d follows %d: commands of the older epoch are refused", epoch,
                         self.highest)
            self.highest = epoch

    def refuses(self, method: str, header: str | None) -> str | None:
        """Why a request is refused, or None. Reads (GET, HEAD) of a former leader are let through."""
        if header is None:
            return None
        try:
            epoch = int(header)
        except ValueError:
            return f"{LEADER_EPOCH_HEADER} must be an integer, got {header[:40]!r}"
        if self.highest is not None and epoch < self.highest and method not in ("GET", "HEAD"):
            return f"write refused: epoch {epoch} no longer holds the manager leadership (epoch {self.highest} does)"
        self.learn(epoch)
        return None


class EpochFenceMiddleware:
    """ASGI middleware: a refused command gets 409 {"error": "not_leader", "detail": ...} (the manager's NodeClient
    raises it as NotLeader); a malformed epoch is a 400."""

    def __init__(self, app: ASGIApp, fence: EpochFence) -> None:
        self.app = app
        self.fence = fence

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            header = Headers(scope=scope).get(LEADER_EPOCH_HEADER)
            refusal = self.fence.refuses(scope["method"], header)
            if refusal is not None:
                code, status = ("not_leader", 409) if refusal.startswith("write refused") else ("bad_request", 400)
                await JSONResponse({"error": code, "detail": refusal}, status_code=status)(scope, receive, send)
                return
        await self.app(scope, receive, send)
