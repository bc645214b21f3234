"""Turn what libvirt's screenshot API returns (QEMU sends PPM, the test driver PNG) into PNG bytes."""
from __future__ import annotations

import struct
import zlib

from core.errors import HypervisorError

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def to_png(data: bytes, mime: str) -> bytes:
    """Return `data` as PNG; raises HypervisorError for a format this module cannot read."""
    if data.startswith(PNG_SIGNATURE):
        return data
    if data.startswith(b"P6"):
        width, height, pixels = _read_ppm(data)
        return encode_png_rgb(width, height, pixels)
    raise HypervisorError(libvirt_code="-", detail=f"screenshot came back as {mime!r}, which is not PNG or PPM")


def _read_ppm(data: bytes) -> tuple[int, int, bytes]:
    """Parse a binary (P6) PPM with maxval 255: header tokens may be separated by comments."""
    tokens: list[bytes] = []
    pos = 0
    while len(tokens) < 4:
        while pos < len(data) and data[pos:pos + 1].isspace():
            pos += 1
        if data[pos:pos + 1] == b"#":
            pos = data.index(b"\n", pos) + 1
            continue
        start = pos
        while pos < len(data) and not data[pos:pos + 1].isspace():
            pos += 1
        tokens.append(data[start:pos])
    pos += 1  # the single whitespace byte after maxval
    magic, width, height, maxval = tokens[0], int(tokens[1]), int(tokens[2]), int(tokens[3])
    if magic != b"P6" or maxval != 255:
        raise HypervisorError(libvirt_code="-", detail=f"unsupported PPM screenshot (magic {magic!r}, maxval {maxval})")
    pixels = data[pos:pos + width * height * 3]
    if len(pixels) != width * height * 3:
        raise HypervisorError(libvirt_code="-", detail="truncated PPM screenshot")
    return width, height, pixels


def encode_png_rgb(width: int, height: int, pixels: bytes) -> bytes:
    """Encode 8-bit RGB rows as a PNG (filter type 0 on every row)."""
    stride = width * 3
    raw = b"".join(b"\x00" + pixels[row * stride:(row + 1) * stride] for row in range(height))

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return PNG_SIGNATURE + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw, 6)) + chunk(b"IEND", b"")
