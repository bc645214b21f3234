"""A minimal RFB (VNC) client over a WebSocket, as noVNC speaks to the manager's console proxy (/console/ws, opened
with a broker ticket): the version, security (None: the proxy authenticated to the guest) and init phases, update
requests, and - for the planner - a framebuffer kept from Raw and CopyRect rectangles, whose watermark region is
decoded after each update and timestamped with the monotonic clock (planner.watermark).

`Viewer` counts bytes only (the console proxy's tests and bench/console_proxy.py use it through
tests/harness/console_viewer.py); `FramebufferViewer` also keeps the pixels."""
from __future__ import annotations

import asyncio
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from planner.watermark import REGION_HEIGHT, REGION_WIDTH, MarkTracker, Observed, decode

RFB_VERSION = b"RFB 003.008\n"
ENCODING_RAW = 0
ENCODING_COPYRECT = 1
# The pixel formats the planner asks for. Full colour: 32 bits per pixel, depth 24, little-endian, true colour, 8 bits
# per channel at shifts 16 (red), 8 (green), 0 (blue): pixel bytes B, G, R, X. Compact: 8 bits per pixel, true colour
# RGB332 (red 3 bits at shift 5, green 3 at 2, blue 2 at 0): a quarter of the bytes over the display path, and the
# watermark's white and black blocks stay exact.
PIXEL_FORMAT = struct.pack(">BBBBHHHBBB3x", 32, 24, 0, 1, 255, 255, 255, 16, 8, 0)
BYTES_PER_PIXEL = 4
COMPACT_PIXEL_FORMAT = struct.pack(">BBBBHHHBBB3x", 8, 8, 0, 1, 7, 7, 3, 5, 2, 0)


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

    async def request_update(self, width: int, height: int, incremental: bool, x: int = 0, y: int = 0) -> None:
        await self.ws.send(struct.pack(">BBHHHH", 3, int(incremental), x, y, width, height))

    async def set_encodings(self, *encodings: int) -> None:
        await self.ws.send(struct.pack(f">BBH{len(encodings)}i", 2, 0, len(encodings), *encodings))

    async def set_raw_encoding(self) -> None:
        await self.set_encodings(ENCODING_RAW)

    async def drain_messages(self) -> None:
        """Read whatever the server sent (framebuffer updates are counted in `received`, not parsed)."""
        try:
            message = await self.ws.recv()
        except ConnectionClosed as exc:
            raise Refused.of(exc) from None
        self.received += len(message)


class Framebuffer:
    """Pixels, row-major: in PIXEL_FORMAT (B, G, R, X per pixel), or with `compact` in COMPACT_PIXEL_FORMAT."""

    def __init__(self, width: int, height: int, compact: bool = False) -> None:
        self.width, self.height, self.compact = width, height, compact
        self.bpp = 1 if compact else BYTES_PER_PIXEL
        self.data = bytearray(width * height * self.bpp)

    def put_raw(self, x: int, y: int, w: int, h: int, pixels: bytes) -> None:
        row = w * self.bpp
        for i in range(h):
            start = ((y + i) * self.width + x) * self.bpp
            self.data[start:start + row] = pixels[i * row:(i + 1) * row]

    def copy_rect(self, x: int, y: int, w: int, h: int, src_x: int, src_y: int) -> None:
        rows = [self.data[((src_y + i) * self.width + src_x) * self.bpp:
                          ((src_y + i) * self.width + src_x + w) * self.bpp] for i in range(h)]
        for i, row in enumerate(rows):
            start = ((y + i) * self.width + x) * self.bpp
            self.data[start:start + len(row)] = row

    def pixel(self, x: int, y: int) -> tuple[int, int, int]:
        offset = (y * self.width + x) * self.bpp
        if self.compact:
            v = self.data[offset]
            return (v >> 5) * 255 // 7, ((v >> 2) & 7) * 255 // 7, (v & 3) * 255 // 3
        b, g, r = self.data[offset:offset + 3]
        return r, g, b


class FramebufferViewer(Viewer):
    """A viewer that keeps the framebuffer (Raw and CopyRect, the only encodings it asks for) and, after each update
    that touched the watermark region, decodes the marks and feeds them, timestamped by `clock`, to `tracker`."""

    def __init__(self, ws: ClientConnection, clock: Callable[[], float] = time.monotonic,
                 compact: bool = False) -> None:
        super().__init__(ws)
        self.clock, self.compact = clock, compact
        self.tracker = MarkTracker()
        self.framebuffer: Framebuffer | None = None
        self.updates = 0
        self.changed = asyncio.Event()

    async def start(self) -> ServerInit:
        _, init = await self.handshake()
        await self.ws.send(struct.pack(">B3x", 0) + (COMPACT_PIXEL_FORMAT if self.compact else PIXEL_FORMAT))
        await self.set_encodings(ENCODING_RAW, ENCODING_COPYRECT)
        self.framebuffer = Framebuffer(init.width, init.height, self.compact)
        await self.request_update(init.width, init.height, incremental=False)
        return init

    async def read_message(self) -> None:
        """Read one server message; after a framebuffer update, ask for the next (incremental) one."""
        (kind,) = await self.read(1)
        if kind == 0:
            await self._update()
        elif kind == 1:  # SetColourMapEntries (not used in true colour)
            _, _, count = struct.unpack(">BHH", await self.read(5))
            await self.read(6 * count)
        elif kind == 2:  # Bell
            pass
        elif kind == 3:  # ServerCutText
            await self.read(3)
            (length,) = struct.unpack(">I", await self.read(4))
            await self.read(length)
        else:
            raise Refused(None, f"the server sent message type {kind}, which this client does not read")

    async def _update(self) -> None:
        fb = self.framebuffer
        assert fb is not None, "start() first"
        _, count = struct.unpack(">BH", await self.read(3))
        touched = False
        for _ in range(count):
            x, y, w, h, encoding = struct.unpack(">HHHHi", await self.read(12))
            if encoding == ENCODING_RAW:
                fb.put_raw(x, y, w, h, await self.read(w * h * fb.bpp))
            elif encoding == ENCODING_COPYRECT:
                src_x, src_y = struct.unpack(">HH", await self.read(4))
                fb.copy_rect(x, y, w, h, src_x, src_y)
            else:
                raise Refused(None, f"the server sent encoding {encoding}, which this client did not ask for")
            touched = touched or (x < REGION_WIDTH and y < REGION_HEIGHT)
        now = self.clock()
        self.updates += 1
        if touched:
            self.tracker.feed(decode(fb.pixel), now)
            self.changed.set()
        await self.request_update(fb.width, fb.height, incremental=True)

    async def run(self) -> None:
        """Read messages until the connection closes (raises Refused then)."""
        while True:
            await self.read_message()

    async def wait_for(self, seq: int, timeout: float) -> Observed | None:
        """The observation of operation `seq` once its end mark was seen, or None after `timeout` s."""
        deadline = self.clock() + timeout
        while True:
            seen = self.tracker.take(seq)
            if seen is not None:
                return seen
            remaining = deadline - self.clock()
            if remaining <= 0:
                return None
            self.changed.clear()
            try:
                await asyncio.wait_for(self.changed.wait(), remaining)
            except TimeoutError:
                return None


def console_url(base_url: str, ws_path: str, ticket: str) -> str:
    return base_url.replace("http", "ws", 1) + f"{ws_path}?ticket={ticket}"


async def open_viewer(url: str) -> Viewer:
    return Viewer(await connect(url, max_size=None, open_timeout=60))


async def open_framebuffer_viewer(url: str, compact: bool = False) -> FramebufferViewer:
    return FramebufferViewer(await connect(url, max_size=None, open_timeout=60), compact=compact)
