"""The planner's agent commands (docs/planner.md "Agent commands"): building `planner-op` and `planner-apps` lines and
reading their replies. Pure; the manager forwards the lines to the guest agent (POST /desktops/{id}/planner/...)."""
from __future__ import annotations

import re
from dataclasses import dataclass

NAME = re.compile(r"[a-z][a-z0-9_-]{0,31}")
MAX_SEQ = 999
MAX_CODE = 1023


class GuestProtocolError(ValueError):
    """A request the guest would refuse, or a reply that does not follow the protocol."""


@dataclass(frozen=True)
class OpResult:
    ok: bool
    code: int
    seq: int
    guest_s: float | None  # the guest's CLOCK_MONOTONIC time between start and end mark (ok only)
    reason: str = ""


def op_command(app: str, op: str, seq: int, code: int) -> str:
    for what, value in (("application", app), ("operation", op)):
        if not isinstance(value, str) or not NAME.fullmatch(value):
            raise GuestProtocolError(f"{what} {value!r} is not a name the guest takes ({NAME.pattern})")
    if isinstance(seq, bool) or not isinstance(seq, int) or not 1 <= seq <= MAX_SEQ:
        raise GuestProtocolError(f"seq must be a whole number 1-{MAX_SEQ}, got {seq!r}")
    if isinstance(code, bool) or not isinstance(code, int) or not 0 <= code <= MAX_CODE:
        raise GuestProtocolError(f"code must be a whole number 0-{MAX_CODE}, got {code!r}")
    return f"planner-op {app} {op} {seq} {code}"


def parse_op_reply(reply: str, seq: int, code: int) -> OpResult:
    """`ok CODE SEQ MICROSECONDS` or `FAIL CODE SEQ reason`; raises GuestProtocolError for `ERR ...` (nothing ran)
    and for anything else, or a reply for another operation."""
    words = reply.strip().split(" ", 3)
    if words[0] == "ERR":
        raise GuestProtocolError(f"the guest refused the operation: {reply.strip()[4:] or 'no reason given'}")
    if words[0] not in ("ok", "FAIL") or len(words) < 3 or not words[1].isdigit() or not words[2].isdigit():
        raise GuestProtocolError(f"unexpected reply from the guest agent: {reply[:200]!r}")
    if (int(words[1]), int(words[2])) != (code, seq):
        raise GuestProtocolError(f"the guest answered for code {words[1]} seq {words[2]}, not {code} {seq}")
    if words[0] == "ok":
        if len(words) != 4 or not words[3].isdigit():
            raise GuestProtocolError(f"unexpected reply from the guest agent: {reply[:200]!r}")
        return OpResult(True, code, seq, int(words[3]) / 1e6)
    return OpResult(False, code, seq, None, words[3] if len(words) == 4 else "")


def parse_apps(reply: str) -> dict[str, list[str]]:
    """`APP:OP,OP APP:OP ...` as {app: [op, ...]}; raises GuestProtocolError for `ERR ...` or a malformed reply."""
    reply = reply.strip()
    if reply.startswith("ERR"):
        raise GuestProtocolError(f"the desktop has no planner tools: {reply[4:] or reply}")
    apps: dict[str, list[str]] = {}
    for item in reply.split():
        app, sep, ops = item.partition(":")
        if not sep or not NAME.fullmatch(app) or not all(NAME.fullmatch(op) for op in ops.split(",")):
            raise GuestProtocolError(f"unexpected planner-apps reply: {reply[:200]!r}")
        apps[app] = ops.split(",")
    return apps
