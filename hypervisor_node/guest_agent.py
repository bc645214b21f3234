"""The host side of the guest agent's line protocol; the guest side is the demo desktop's agent
(image_manager.demo_image.AGENT_SCRIPT).

One request line in, one reply line out, over the domain's virtio-serial channel: a unix socket that
QEMU serves, one client at a time. A request may carry an id, `@<id> <command>`, and the agent then
answers `@<id> <reply>`. A plain `<command>` line (a person at the socket with socat) gets a plain reply.

Why the id: while no client is connected, the guest's write of a reply waits, and QEMU delivers it to
the NEXT client. So the reply to a call that timed out (a slow guest, a loaded host) arrives first on
the following call, and a protocol without ids would take it for the answer to the following command.
`call` therefore tags every request with a fresh id and skips every line not tagged with that id
(late replies to earlier calls, untagged replies to a person's commands) until its own reply arrives
or its timeout passes. This is the only client of the protocol: the node driver and the tests use it.
"""
from __future__ import annotations

import re
import socket
import time
import uuid

from core.errors import GatewayTimeout, Invalid, Unavailable

REQUEST_ID_MARK = "@"
REQUEST_ID_PATTERN = re.compile(r"[A-Za-z0-9_-]{1,64}")
MAX_COMMAND = 4096
MAX_REPLY = 64 * 1024


def new_request_id() -> str:
    """A fresh id: unique enough that a late reply to another call never carries it."""
    return uuid.uuid4().hex


def check_command(command: object) -> str:
    """`command` if it is one line the agent can take; raises Invalid saying what to send instead."""
    if not isinstance(command, str) or not command.strip() or "\n" in command or "\r" in command \
            or len(command) > MAX_COMMAND:
        raise Invalid(f"command must be one non-empty line of at most {MAX_COMMAND} characters")
    if command.lstrip().startswith(REQUEST_ID_MARK):
        raise Invalid(f"command must not start with {REQUEST_ID_MARK!r}: that marks a request id, which the "
                      "caller adds itself; send the bare command (e.g. 'ping')")
    return command


def tagged_request(request_id: str, command: str) -> bytes:
    """The request line (with its newline) that asks for `command` under `request_id`."""
    if not REQUEST_ID_PATTERN.fullmatch(request_id):
        raise Invalid(f"request id must be 1-64 letters, digits, '-' or '_', got {request_id!r}")
    return f"{REQUEST_ID_MARK}{request_id} {check_command(command)}\n".encode()


def parse_reply(line: str) -> tuple[str | None, str]:
    """(request id, reply) of one reply line given without its newline; the id is None when the line
    carries none (a reply to an untagged command, or the tail of a reply cut off when a client left)."""
    line = line.rstrip("\r")
    if line.startswith(REQUEST_ID_MARK):
        tag, _, reply = line[1:].partition(" ")
        if REQUEST_ID_PATTERN.fullmatch(tag):
            return tag, reply
    return None, line


def call(socket_path: str, command: str, timeout: float, *, what: str = "the guest agent") -> str:
    """Send `command` to the agent at `socket_path` and return its reply line (without the id).

    Lines that are not the reply to THIS request are read and dropped. Raises Invalid for a command
    that is not one line, GatewayTimeout (naming `what`) when the reply has not arrived within
    `timeout` s, Unavailable when the socket cannot be reached, the agent hangs up first, or a line
    grows beyond MAX_REPLY bytes. The caller serialises calls to one socket: QEMU serves one client.
    """
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout <= 0:
        raise Invalid(f"timeout must be a positive number of seconds, got {timeout!r}")
    request_id = new_request_id()
    request = tagged_request(request_id, command)
    deadline = time.monotonic() + timeout
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout)
            sock.connect(socket_path)
            sock.sendall(request)
            pending = b""
            while True:
                while b"\n" in pending:
                    raw, pending = pending.split(b"\n", 1)
                    reply_id, reply = parse_reply(raw.decode(errors="replace"))
                    if reply_id == request_id:
                        return reply
                if len(pending) > MAX_REPLY:
                    raise Unavailable(what=what, reason=f"it sent a line over {MAX_REPLY} bytes")
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError
                sock.settimeout(remaining)
                chunk = sock.recv(65536)
                if not chunk:
                    raise Unavailable(what=what, reason="it closed the channel before replying")
                pending += chunk
    except TimeoutError:
        raise GatewayTimeout(what=what, seconds=timeout) from None
    except OSError as exc:
        raise Unavailable(what=what, reason=f"{socket_path}: {exc.strerror or exc}") from None
