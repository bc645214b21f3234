"""The VNC (RFB 3.8) client side the project speaks itself: the VNC authentication's DES response, the handshake up
to the security result, and taking a display exclusively, which makes QEMU drop every other client (its default
share policy, allow-exclusive). The console proxy, the node agent (cutting a revoked user's native client) and the
tests use these; no libvirt, no database."""
from __future__ import annotations

import socket
import struct

from cryptography.hazmat.decrepit.ciphers.algorithms import TripleDES
from cryptography.hazmat.primitives.ciphers import Cipher, modes


class VncRefused(Exception):
    """The server refused the password."""


def vnc_response(password: str, challenge: bytes) -> bytes:
    """VNC authentication: the challenge DES-encrypted with the password (8 bytes, each byte's bits reversed)."""
    key = bytes(int(f"{b:08b}"[::-1], 2) for b in password.encode()[:8].ljust(8, b"\0"))
    encryptor = Cipher(TripleDES(key * 3), modes.ECB()).encryptor()  # three equal keys: single DES
    return encryptor.update(challenge) + encryptor.finalize()


def read_exactly(sock: socket.socket, n: int) -> bytes:
    out = b""
    while len(out) < n:
        chunk = sock.recv(n - len(out))
        if not chunk:
            raise ConnectionError("the VNC server closed the connection")
        out += chunk
    return out


def authenticate(sock: socket.socket, password: str) -> None:
    """RFB 3.8 with VNC authentication; raises VncRefused when the password is refused."""
    if not read_exactly(sock, 12).startswith(b"RFB 003."):
        raise ConnectionError("not an RFB server")
    sock.sendall(b"RFB 003.008\n")
    (count,) = read_exactly(sock, 1)
    if count == 0:
        raise VncRefused("the server refuses everyone")  # its reason follows
    if 2 not in read_exactly(sock, count):
        raise ConnectionError("the server does not offer VNC authentication")
    sock.sendall(b"\x02")
    sock.sendall(vnc_response(password, read_exactly(sock, 16)))
    (result,) = struct.unpack(">I", read_exactly(sock, 4))
    if result != 0:
        raise VncRefused("the server refused the password")


def take_exclusively(host: str, port: int, password: str, timeout: float = 10.0) -> None:
    """Connect with `password` asking for exclusive access (ClientInit shared-flag 0): the server disconnects every
    other client before it answers with its ServerInit; then leave. Raises VncRefused, OSError."""
    with socket.create_connection((host, port), timeout=timeout) as sock:
        authenticate(sock, password)
        sock.sendall(b"\x00")
        read_exactly(sock, 24)  # ServerInit's fixed part: the others are gone by now
