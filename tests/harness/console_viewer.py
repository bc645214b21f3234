"""A minimal RFB (VNC) viewer over a WebSocket, as noVNC speaks to the manager's console proxy: for the proxy's tests
and bench/console_proxy.py. It does the version, security (None: the proxy authenticated to the guest) and init
phases, then asks for framebuffer updates and counts their bytes."""
from __future__ import annotations

import struct
from dataclasses import dataclass

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

RFB_VERSION = b"RFB 003.008\n"


class Refused(Exception):
    """The proxy closed the WebSocket: `code` and `reason` as it sent them."""

    def __init__(self, code: int | None, reason: str) -> None:
        super().__init__(f"{code}: {reason}")
        self.code, self.reason = code, reason

    @classmethod
    def of(cls, closed: ConnectionClosed) -> "Refused":
        """The close frame the proxy sent, from the exception websockets raised on a receive or a send."""
        return cls(closed.rcvd.code if closed.rcvd else None, closed.rcvd.reason if closed.rcvd else "")


@dataclass
class ServerInit:
    width: int
    height: int
    bits_per_pixel: int
    name: str


class Viewer:
    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.buffer = b""
        self.received = 0

    async def read(self, n: int) -> bytes:
        while len(self.buffer) < n:
            try:
                message = await self.ws.recv()
            except ConnectionClosed as exc:
                raise Refused.of(exc) from None
            self.received += len(message)
            self.buffer += message if isinstance(message, bytes) else message.encode()
        out, self.buffer = self.buffer[:n], self.buffer[n:]
        return out

    async def handshake(self) -> tuple[bytes, ServerInit]:
        """Version, security None, ClientInit (shared) and ServerInit. Returns the server's version line too."""
        version = await self.read(12)
        await self.ws.send(RFB_VERSION)
        (count,) = await self.read(1)
        types = await self.read(count)
        if 1 not in types:
            raise Refused(None, f"security types {list(types)} offer no None")
        await self.ws.send(b"\x01")
        (result,) = struct.unpack(">I", await self.read(4))
        if result != 0:
            raise Refused(None, "security failed")
        await self.ws.send(b"\x01")  # ClientInit: shared
        width, height, bpp = struct.unpack(">HHB", (await self.read(5)))
        await self.read(15)  # rest of the pixel format
        (name_length,) = struct.unpack(">I", await self.read(4))
        name = (await self.read(name_length)).decode("utf-8", "replace")
        return version, ServerInit(width, height, bpp, name)

    async def request_update(self, width: int, height: int, incremental: bool) -> None:
        await self.ws.send(struct.pack(">BBHHHH", 3, int(incremental), 0, 0, width, height))

    async def set_raw_encoding(self) -> None:
        await self.ws.send(struct.pack(">BBHi", 2, 0, 1, 0))

    async def drain_messages(self) -> None:
        """Read whatever the server sent (framebuffer updates are counted in `received`, not parsed)."""
        try:
            message = await self.ws.recv()
        except ConnectionClosed as exc:
            raise Refused.of(exc) from None
        self.received += len(message)


def console_url(base_url: str, ws_path: str, ticket: str) -> str:
    return base_url.replace("http", "ws", 1) + f"{ws_path}?ticket={ticket}"


async def open_viewer(url: str) -> Viewer:
    return Viewer(await connect(url, max_size=None, open_timeout=60))
