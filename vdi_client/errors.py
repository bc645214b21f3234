"""What the client raises: the server's errors, carrying its code and message, and the failures around them."""
from __future__ import annotations

from typing import Any


class VdiClientError(Exception):
    """Anything this client raises on purpose."""


class ApiError(VdiClientError):
    """The manager answered with an error: `{"error": code, "detail": message, ...}` and an HTTP status.

    `code` is the stable code to act on (not_found, duplicate, invalid, forbidden, desktop_busy, or a search error
    class such as INVALID_CONDITION_VALUE); `detail` is the server's message for people; `body` the whole reply
    (a search error's `position`, a 429's `retry_after`, a 422's `errors`)."""

    def __init__(self, status: int, code: str, detail: str, *, method: str = "", path: str = "",
                 body: dict[str, Any] | None = None) -> None:
        super().__init__(detail)
        self.status = status
        self.code = code
        self.detail = detail
        self.method = method
        self.path = path
        self.body = body or {}

    def __str__(self) -> str:
        return f"{self.detail} ({self.status} {self.code})"


class ServerUnreachable(VdiClientError):
    """No answer from the manager at all (refused, timed out, a name that does not resolve)."""


class JobFailed(VdiClientError):
    """A job the client waited for ended failed or cancelled; `job` is its last state (its `error` says why)."""

    def __init__(self, job: Any) -> None:
        super().__init__(f"job {job.id} ({job.kind}) {job.state}: {job.error or 'no reason given'}")
        self.job = job


class JobTimeout(VdiClientError):
    """A job did not finish within the time the caller was prepared to wait; `job` is its last state."""

    def __init__(self, job: Any, seconds: float) -> None:
        super().__init__(f"job {job.id} ({job.kind}) still {job.state} after {seconds:g} s "
                         f"({job.progress:.0f}% done)")
        self.job = job
