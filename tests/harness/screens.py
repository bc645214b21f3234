"""Reading a guest's screen and typing on its keyboard, for tests.

`png_pixels` decodes the screenshots hypervisor_node.screenshot returns (8-bit RGB PNGs: its own, or QEMU's). `keycodes_for` turns text into the Linux input key codes that
LibvirtDriver.send_key presses, for a US keyboard layout (what the demo guest's console assumes).
"""
from __future__ import annotations

import struct
import zlib

from hypervisor_node.screenshot import PNG_SIGNATURE

_LETTERS = {c: code for c, code in zip("qwertyuiop", range(16, 26))} | \
    {c: code for c, code in zip("asdfghjkl", range(30, 39))} | \
    {c: code for c, code in zip("zxcvbnm", range(44, 51))}
_DIGITS = {c: code for c, code in zip("1234567890", range(2, 12))}
KEY_LEFTSHIFT = 42
KEY_ENTER = 28
# character -> (key code, with shift)
_KEYS: dict[str, tuple[int, bool]] = {c: (k, False) for c, k in (_LETTERS | _DIGITS).items()} | \
    {c.upper(): (k, True) for c, k in _LETTERS.items()} | {
        " ": (57, False), "\n": (KEY_ENTER, False), "-": (12, False), "_": (12, True), "=": (13, False),
        ".": (52, False), "/": (53, False), ">": (52, True), ",": (51, False), ";": (39, False),
        ":": (39, True), "'": (40, False), '"': (40, True), "|": (43, True)}


def keycodes_for(text: str) -> list[list[int]]:
    """One chord (keys pressed together) per character of `text`; ValueError for a character without a key."""
    chords = []
    for char in text:
        if char not in _KEYS:
            raise ValueError(f"no key for {char!r} on the test keyboard map")
        code, shift = _KEYS[char]
        chords.append([KEY_LEFTSHIFT, code] if shift else [code])
    return chords


def png_pixels(png: bytes) -> tuple[int, int, bytes]:
    """(width, height, RGB bytes row after row) of an 8-bit RGB PNG, as hypervisor_node.screenshot writes
    (filter 0) or QEMU sends (any of the five row filters)."""
    assert png.startswith(PNG_SIGNATURE)
    pos, idat, width, height = len(PNG_SIGNATURE), b"", 0, 0
    while pos < len(png):
        (length,) = struct.unpack(">I", png[pos:pos + 4])
        kind, body = png[pos + 4:pos + 8], png[pos + 8:pos + 8 + length]
        (crc,) = struct.unpack(">I", png[pos + 8 + length:pos + 12 + length])
        assert crc == zlib.crc32(kind + body)
        if kind == b"IHDR":
            width, height = struct.unpack(">II", body[:8])
            assert body[8:10] == b"\x08\x02", "only 8-bit RGB PNGs are read here"
        elif kind == b"IDAT":
            idat += body
        pos += 12 + length
    raw = zlib.decompress(idat)
    stride = width * 3
    previous = bytearray(stride)
    rows = []
    for r in range(height):
        kind, line = raw[r * (stride + 1)], bytearray(raw[r * (stride + 1) + 1:(r + 1) * (stride + 1)])
        for i in range(stride):
            left = line[i - 3] if i >= 3 else 0
            up, up_left = previous[i], (previous[i - 3] if i >= 3 else 0)
            if kind == 1:
                line[i] = (line[i] + left) & 0xFF
            elif kind == 2:
                line[i] = (line[i] + up) & 0xFF
            elif kind == 3:
                line[i] = (line[i] + (left + up) // 2) & 0xFF
            elif kind == 4:
                guess = left + up - up_left
                near = min((abs(guess - left), 0, left), (abs(guess - up), 1, up), (abs(guess - up_left), 2, up_left))
                line[i] = (line[i] + near[2]) & 0xFF
            else:
                assert kind == 0, f"row {r} has unknown PNG filter {kind}"
        rows.append(bytes(line))
        previous = line
    return width, height, b"".join(rows)


def share_of_colour(png: bytes, rgb: tuple[int, int, int], tolerance: int = 24) -> float:
    """The share (0-1) of the screen's pixels within `tolerance` of `rgb` on every channel."""
    width, height, pixels = png_pixels(png)
    r0, g0, b0 = rgb
    hits = sum(1 for i in range(0, len(pixels), 3)
               if abs(pixels[i] - r0) <= tolerance and abs(pixels[i + 1] - g0) <= tolerance
               and abs(pixels[i + 2] - b0) <= tolerance)
    return hits / max(1, width * height)
