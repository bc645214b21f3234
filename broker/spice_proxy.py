"""`vdi spice-proxy`: an HTTP CONNECT proxy for SPICE clients outside the hypervisors' network, as oVirt puts squid
in front of its hosts. A .vv file with `proxy=http://<this proxy>` (VDI_SPICE_PROXY) makes remote-viewer send
`CONNECT <display address>:<port> HTTP/1.1`; the proxy opens a tunnel only to a known host's display address
(Host.console_address, read from the database every few seconds) and a port in the display range (VDI_DISPLAY_PORTS),
so it cannot be used to reach anything else (the manager, node agents, other machines). The console ticket inside
the tunnel still authenticates the client to the display.

Answers: 200 and a tunnel; 400 for a malformed request or headers over HEADER_LIMIT bytes; 405 for any other
method; 403 for a target that is not a display; 502 when the display does not answer.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable

from sqlalchemy import select
from sqlalchemy.orm import Session

from manager.models import Host

log = logging.getLogger("vdi.spice_proxy")

HEADER_LIMIT = 8192  # the request line and headers of one CONNECT
HEADER_TIMEOUT_S = 10.0
CONNECT_TIMEOUT_S = 10.0
REFRESH_S = 5.0  # how long the list of display addresses is reused
_CHUNK = 64 * 1024


def known_display_addresses(session: Session) -> set[str]:
    """Every host's console address (its display address, else its management address)."""
    return {h.console_address for h in session.scalars(select(Host)) if h.console_address}


def parse_port_range(text: str) -> range:
    """"5900-65535" -> range(5900, 65536)."""
    low, _, high = text.partition("-")
    first, last = int(low), int(high or low)
    if not 1 <= first <= last <= 65535:
        raise ValueError(f"port range {text!r} must be low-high within 1-65535")
    return range(first, last + 1)


def _authority(target: str) -> tuple[str, int] | None:
    """host:port or [v6]:port of a CONNECT line; None when malformed."""
    host, sep, port = target.rpartition(":")
    if not sep or not port.isdigit() or not host:
        return None
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host, int(port)


class SpiceProxy:
    """The proxy server. `allowed_hosts` is called (in a thread, at most every REFRESH_S) for the display addresses."""

    def __init__(self, allowed_hosts: Callable[[], set[str]], ports: range) -> None:
        self.allowed_hosts = allowed_hosts
        self.ports = ports
        self._allowed: set[str] = set()
        self._read_at = float("-inf")
        self._server: asyncio.base_events.Server | None = None

    async def _hosts(self) -> set[str]:
        if time.monotonic() - self._read_at >= REFRESH_S:
            self._allowed = await asyncio.to_thread(self.allowed_hosts)
            self._read_at = time.monotonic()
        return self._allowed

    async def start(self, host: str, port: int) -> tuple[str, int]:
        """Listen; returns the bound address (port 0 picks a free one)."""
        self._server = await asyncio.start_server(self._handle, host, port, limit=HEADER_LIMIT)
        return self._server.sockets[0].getsockname()[:2]

    async def serve_forever(self) -> None:
        assert self._server is not None
        async with self._server:
            await self._server.serve_forever()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")
        client = f"{peer[0]}:{peer[1]}" if peer else "?"
        try:
            target = await self._target(reader, writer, client)
            if target is None:
                return
            try:
                up_reader, up_writer = await asyncio.wait_for(asyncio.open_connection(*target), CONNECT_TIMEOUT_S)
            except (OSError, asyncio.TimeoutError) as exc:
                log.warning("%s: display %s:%d does not answer: %s", client, *target, exc)
                await _answer(writer, 502, "Bad Gateway", f"the display {target[0]}:{target[1]} does not answer")
                return
            writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
            await writer.drain()
            log.info("tunnel %s -> %s:%d opened", client, *target)
            sent = await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))
            log.info("tunnel %s -> %s:%d closed (%d bytes up, %d down)", client, *target, *sent)
        finally:
            with contextlib.suppress(Exception):
                writer.close()

    async def _target(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                      client: str) -> tuple[str, int] | None:
        """Read and check the CONNECT request; answer and return None when it is refused."""
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), HEADER_TIMEOUT_S)
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, asyncio.TimeoutError, ValueError):
            await _answer(writer, 400, "Bad Request", "send one CONNECT request with at most "
                                                      f"{HEADER_LIMIT} bytes of headers")
            return None
        parts = head.split(b"\r\n", 1)[0].decode("latin-1").split()
        if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
            await _answer(writer, 400, "Bad Request", "expected: CONNECT host:port HTTP/1.1")
            return None
        method, target_text, _ = parts
        if method != "CONNECT":
            await _answer(writer, 405, "Method Not Allowed", "this proxy only tunnels CONNECT to desktop displays",
                          extra="Allow: CONNECT\r\n")
            return None
        target = _authority(target_text)
        if target is None:
            await _answer(writer, 400, "Bad Request", f"{target_text!r} is not host:port")
            return None
        if target[1] not in self.ports or target[0] not in await self._hosts():
            log.warning("%s: refused CONNECT %s (not a desktop display)", client, target_text)
            await _answer(writer, 403, "Forbidden", f"{target_text} is not a desktop display of this installation")
            return None
        return target


async def _answer(writer: asyncio.StreamWriter, status: int, reason: str, message: str, extra: str = "") -> None:
    body = (message + "\n").encode()
    writer.write(f"HTTP/1.1 {status} {reason}\r\nContent-Type: text/plain\r\nContent-Length: {len(body)}\r\n"
                 f"Connection: close\r\n{extra}\r\n".encode() + body)
    with contextlib.suppress(Exception):
        await writer.drain()


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> int:
    """Copy until EOF or an error, then close the writing side. Returns the bytes copied."""
    total = 0
    try:
        while chunk := await reader.read(_CHUNK):
            writer.write(chunk)
            await writer.drain()
            total += len(chunk)
    except (OSError, asyncio.IncompleteReadError):
        pass
    finally:
        with contextlib.suppress(Exception):
            writer.close()
    return total
