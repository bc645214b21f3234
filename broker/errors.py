"""The broker's typed errors (core.errors families, so the API renders them as {"error", "detail"})."""
from __future__ import annotations

from core.errors import BadRequest, Conflict, GatewayTimeout


class NoCommonProtocol(Conflict):
    code = "no_common_protocol"
    msg_fmt = ("no console protocol fits: desktop {desktop} offers {offered}, pool policy is {policy}, "
               "your client supports {client}")


class TooManyDesktops(Conflict):
    code = "too_many_desktops"
    msg_fmt = "you already hold {held} desktop(s) of pool {pool}, the most it allows per user ({limit})"


class PoolClosed(Conflict):
    code = "pool_closed"
    msg_fmt = "pool {pool} {reason}"


class BadConnectRequest(BadRequest):
    code = "bad_connect_request"
    msg_fmt = "{reason}"


class DesktopStartTimeout(GatewayTimeout):
    code = "desktop_start_timeout"
    msg_fmt = "desktop {desktop} did not start within {seconds} s; try again shortly or ask an administrator"
