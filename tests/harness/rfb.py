"""Speaking RFB (VNC) to a guest's display directly, for tests: does a password open it, and a client that stays
attached (QEMU counts it, and libvirt reports it, as a console client) until it closes. The VNC authentication is
manager.console_proxy's, the one DES challenge-response of the project."""
from __future__ import annotations

import contextlib
import socket
import struct
from collections.abc import Iterator

from manager.console_proxy import vnc_response


def _read(sock: socket.socket, n: int) -> bytes:
    out = b""
    while len(out) < n:
        chunk = sock.recv(n - len(out))
        if not chunk:
            raise ConnectionError("the VNC server closed the connection")
        out += chunk
    return out


class VncRefused(Exception):
    """The server refused the password."""


def _authenticate(sock: socket.socket, password: str) -> None:
    """RFB 3.8 with VNC authentication; raises VncRefused when the password is refused."""
    if not _read(sock, 12).startswith(b"RFB 003."):
        raise ConnectionError("not an RFB server")
    sock.sendall(b"RFB 003.008\n")
    (count,) = _read(sock, 1)
    if count == 0:
        raise VncRefused("the server refuses everyone")  # its reason follows
    if 2 not in _read(sock, count):
        raise ConnectionError("the server does not offer VNC authentication")
    sock.sendall(b"\x02")
    sock.sendall(vnc_response(password, _read(sock, 16)))
    (result,) = struct.unpack(">I", _read(sock, 4))
    if result != 0:
        raise VncRefused("the server refused the password")


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
