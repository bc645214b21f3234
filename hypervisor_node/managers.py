"""The managers a node agent reports to: several `vdi serve` instances share one database and any of them takes
heartbeats and console events (docs/ha.md). The agent is given all their URLs (`--manager URL1,URL2`), sends to
one, and moves on to the next when that one cannot be reached or answers with a server error; the one that
answered stays the one used until it fails in turn."""
from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import httpx

from core.errors import Invalid

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
