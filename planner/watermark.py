"""Watermarks in a planner desktop's framebuffer (docs/planner.md "Watermark pixel layout"): decoding the three lines
from pixels, and tracking the start and end of each operation as a client sees them.

Layout: a reserved region x 0-191, y 0-23; three lines 8 px tall (event code, start mark n, end mark 1000 - n); each
line 12 blocks of 16x8 px: block 0 white, blocks 1-10 the value's bits (most significant first, white = 1), block 11
black. A block is read at its centre pixel, white when its luminance is above 127."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

REGION_WIDTH = 192
REGION_HEIGHT = 24
LINE_HEIGHT = 8
BLOCK_WIDTH = 16
BLOCKS = 12
VALUE_BITS = 10
END_SUM = 1000

Pixel = Callable[[int, int], tuple[int, int, int]]


def luminance(rgb: tuple[int, int, int]) -> float:
    r, g, b = rgb
    return 0.299 * r + 0.587 * g + 0.114 * b


def decode_line(pixel: Pixel, line: int) -> int | None:
    """The value of watermark line `line` (0: code, 1: start mark, 2: end mark), or None when its framing blocks are
    not white then black (the region is not (yet) a watermark: a screen before the planner paints it)."""
    y = line * LINE_HEIGHT + LINE_HEIGHT // 2
    bits = [luminance(pixel(k * BLOCK_WIDTH + BLOCK_WIDTH // 2, y)) > 127 for k in range(BLOCKS)]
    if not bits[0] or bits[-1]:
        return None
    value = 0
    for bit in bits[1:1 + VALUE_BITS]:
        value = (value << 1) | int(bit)
    return value


@dataclass(frozen=True)
class Marks:
    code: int
    start: int
    end: int


def decode(pixel: Pixel) -> Marks | None:
    """The three lines, or None when any of them is not framed."""
    values = [decode_line(pixel, line) for line in range(3)]
    if None in values:
        return None
    return Marks(*values)  # type: ignore[arg-type]


def draw_line(put: Callable[[int, int, tuple[int, int, int]], None], line: int, value: int) -> None:
    """Draw one line as the guest does (for building test framebuffers and checking the decoder against them)."""
    if not 0 <= value < 1 << VALUE_BITS:
        raise ValueError(f"a watermark line holds 0-{(1 << VALUE_BITS) - 1}, got {value}")
    bits = [1] + [(value >> (VALUE_BITS - 1 - i)) & 1 for i in range(VALUE_BITS)] + [0]
    for k, bit in enumerate(bits):
        colour = (255, 255, 255) if bit else (0, 0, 0)
        for y in range(line * LINE_HEIGHT, (line + 1) * LINE_HEIGHT):
            for x in range(k * BLOCK_WIDTH, (k + 1) * BLOCK_WIDTH):
                put(x, y, colour)


@dataclass
class Observed:
    """One operation as the client saw it: monotonic timestamps of its start and end marks (None: not seen)."""
    seq: int
    code: int
    start_t: float | None = None
    end_t: float | None = None

    @property
    def seconds(self) -> float | None:
        if self.start_t is None or self.end_t is None:
            return None
        return self.end_t - self.start_t


@dataclass
class MarkTracker:
    """Feeds on the marks decoded after each framebuffer update and records when each operation's start mark
    (line 2 = n, line 3 = 0) and end mark (line 2 = n, line 2 + line 3 = 1000) first appeared. The start state can be
    missed when an operation is shorter than the display's refresh: its end then has no start (seconds None)."""
    operations: dict[int, Observed] = field(default_factory=dict)
    last: Marks | None = None

    def feed(self, marks: Marks | None, t: float) -> None:
        if marks is None or marks == self.last:
            return
        self.last = marks
        n = marks.start
        if not 1 <= n <= 999:
            return  # the idle screen (all zero) or a half-drawn state
        seen = self.operations.get(n)
        if marks.end == 0:
            if seen is None or seen.end_t is not None:  # a new operation reusing n after a wrap
                self.operations[n] = Observed(n, marks.code, start_t=t)
        elif n + marks.end == END_SUM:
            if seen is None or seen.end_t is not None and seen.start_t is None:
                self.operations[n] = Observed(n, marks.code, end_t=t)
            elif seen.end_t is None:
                seen.end_t = t

    def take(self, seq: int) -> Observed | None:
        """The observation of operation `seq` once its end was seen (removed, so n can be reused after a wrap)."""
        seen = self.operations.get(seq)
        if seen is None or seen.end_t is None:
            return None
        return self.operations.pop(seq)
