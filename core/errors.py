"""Error classes with a code, an HTTP status and an `expected` flag.

Every error the system raises on purpose derives from `VdiError`. One FastAPI handler renders them as
`{"error": code, "detail": message}`; anything else is an unexpected 500 that is logged, never shown.
Subclasses set `msg_fmt` and are raised with the named fields:

    raise DesktopBusy(desktop_id=d.id, state=d.task_state, action="start")
"""
from __future__ import annotations

from typing import Any, ClassVar


class VdiError(Exception):
    code: ClassVar[str] = "error"
    status: ClassVar[int] = 500
    expected: ClassVar[bool] = False
    msg_fmt: ClassVar[str] = "an unexpected error occurred"

    def __init__(self, message: str | None = None, **fields: Any) -> None:
        self.fields = fields
        if message is None:
            try:
                message = self.msg_fmt.format(**fields)
            except (KeyError, IndexError):
                message = self.msg_fmt
        self.message = message
        super().__init__(message)

    def to_dict(self) -> dict[str, Any]:
        body: dict[str, Any] = {"error": self.code, "detail": self.message}
        extra = getattr(self, "extra", None)
        if extra:
            body.update(extra)
        return body


# ---- the HTTP families -------------------------------------------------------------------------
class Invalid(VdiError):
    code = "invalid"
    status = 422
    expected = True
    msg_fmt = "invalid input"


class BadRequest(VdiError):
    code = "bad_request"
    status = 400
    expected = True
    msg_fmt = "bad request"


class NotAuthenticated(VdiError):
    code = "not_authenticated"
    status = 401
    expected = True
    msg_fmt = "log in first: send a session cookie or an 'Authorization: Bearer <token>' header"


class Forbidden(VdiError):
    code = "forbidden"
    status = 403
    expected = True
    msg_fmt = "you are not allowed to {action}"


class NotFound(VdiError):
    code = "not_found"
    status = 404
    expected = True
    msg_fmt = "{kind} {id} does not exist"


class Conflict(VdiError):
    code = "conflict"
    status = 409
    expected = True
    msg_fmt = "conflict"


class TooLarge(VdiError):
    code = "too_large"
    status = 413
    expected = True
    msg_fmt = "the request body is larger than {limit} bytes, the most this route accepts"


class TooManyRequests(VdiError):
    code = "too_many_requests"
    status = 429
    expected = True
    msg_fmt = "too many attempts; try again in {retry_after} seconds"


class Unavailable(VdiError):
    code = "unavailable"
    status = 503
    expected = True
    msg_fmt = "{what} is unavailable: {reason}"


class GatewayTimeout(VdiError):
    code = "timeout"
    status = 504
    expected = True
    msg_fmt = "{what} did not finish within {seconds} s"


# ---- specific, widely used errors ---------------------------------------------------------------
class DuplicateName(Conflict):
    code = "duplicate"
    msg_fmt = "a {kind} named {name!r} already exists"


class InUse(Conflict):
    code = "in_use"
    msg_fmt = "{kind} {name!r} is used by {users}; remove or move them first"


class DesktopBusy(Conflict):
    code = "desktop_busy"
    msg_fmt = "desktop {desktop_id} is {state}; cannot {action}"


class PoolFull(Conflict):
    code = "pool_full"
    msg_fmt = "pool {pool} is full: {in_use} of {size} desktops in use"


class NotPlaced(Conflict):
    code = "not_placed"
    msg_fmt = ("desktop {desktop} is on no host ({why}), so nothing can run it; deprovision it and provision it "
               "again to place it on a host that is up")


class NoHostAvailable(Conflict):
    code = "no_host"
    msg_fmt = "no host can run {what}: {reason}"


# ---- hypervisor errors (raised inside hypervisor_node, carried over HTTP by NodeClient) -------------
class HypervisorError(VdiError):
    """A libvirt failure, translated at the single seam in hypervisor_node.driver."""

    code = "hypervisor_error"
    status = 502
    expected = True
    msg_fmt = "hypervisor error {libvirt_code}: {detail}"


class DomainNotFound(NotFound):
    code = "domain_not_found"
    msg_fmt = "domain {name} is not defined on this host"


class NodeUnreachable(Unavailable):
    code = "node_unreachable"
    msg_fmt = "host {host} did not answer: {reason}"


def error_from_dict(status: int, body: dict[str, Any]) -> VdiError:
    """Rebuild a typed error from its wire form (used by NodeClient), preserving code and status."""
    code = body.get("error", "error")
    detail = body.get("detail", "")
    for cls in _all_subclasses(VdiError):
        if cls.code == code and cls.status == status:
            return cls(detail)
    err = VdiError(detail)
    err.code = code  # type: ignore[misc]
    err.status = status  # type: ignore[misc]
    return err


def _all_subclasses(cls: type) -> list[type]:
    out = []
    for sub in cls.__subclasses__():
        out.append(sub)
        out.extend(_all_subclasses(sub))
    return out
