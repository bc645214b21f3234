"""Speaking RFB (VNC) to a guest's display directly, for tests: does a password open it, and a client that stays
attached (QEMU counts it, and libvirt reports it, as a console client) until it closes. The VNC handshake is
core.vnc's, the one DES challenge-response of the project."""
from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from collections.abc import Iterator

from core.vnc import VncRefused, authenticate as _authenticate, read_exactly as _read


def vnc_password_accepted(port: int, password: str, host: str = "127.0.0.1", timeout: float = 30.0) -> bool:
    """True when the VNC server at host:port accepts `password` (VNC authentication, RFB 3.8)."""
    with socket.create_connection((host, port), timeout=timeout) as sock:
        try:
            _authenticate(sock, password)
        except VncRefused:
            return False
        return True


@contextlib.contextmanager
def vnc_client(port: int, password: str, host: str = "127.0.0.1", timeout: float = 30.0) -> Iterator[tuple[int, int]]:
    """An attached VNC client (authenticated, ClientInit sent, ServerInit read) for the duration of the block;
    yields the framebuffer's (width, height). Raises VncRefused."""
    with socket.create_connection((host, port), timeout=timeout) as sock:
        _authenticate(sock, password)
        sock.sendall(b"\x01")  # ClientInit: shared, other clients stay
        width, height = struct.unpack(">HH", _read(sock, 4))
        _read(sock, 16)  # pixel format
        _read(sock, struct.unpack(">I", _read(sock, 4))[0])  # desktop name
        yield width, height


class DirectVnc:
    """A stand-in for the console WebSocket that planner.rfb's viewers read: it speaks straight to a guest's VNC server
    over TCP, does the VNC authentication itself (as the manager's console proxy does) and shows the viewer an
    RFB 3.8 server with security None. Lets a test watch a desktop's framebuffer without a manager and broker."""

    _GREETING = b"RFB 003.008\n" + b"\x01\x01" + struct.pack(">I", 0)  # version, security [None], result OK

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.greeted = False
        self.swallow = 2  # the viewer's version line and its choice of security None: answered by _GREETING

    @classmethod
    async def open(cls, port: int, password: str, host: str = "127.0.0.1", timeout: float = 30.0) -> "DirectVnc":
        sock = socket.create_connection((host, port), timeout=timeout)
        try:
            _authenticate(sock, password)
        except BaseException:
            sock.close()
            raise
        sock.setblocking(False)
        reader, writer = await asyncio.open_connection(sock=sock)
        return cls(reader, writer)

    async def recv(self) -> bytes:
        if not self.greeted:
            self.greeted = True
            return self._GREETING
        data = await self.reader.read(1 << 20)
        if not data:
            raise ConnectionError("the VNC server closed the connection")
        return data

    async def send(self, data: bytes) -> None:
        if self.swallow:
            self.swallow -= 1
            return
        self.writer.write(data)
        await self.writer.drain()

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(OSError):
            await self.writer.wait_closed()
