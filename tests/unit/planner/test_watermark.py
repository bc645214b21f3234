"""The watermark decoder on synthetic framebuffers drawn from docs/planner.md's layout (12 blocks of 16x8 px per line,
framing blocks white then black, 10 bits most significant first), through the RFB client's own pixel store."""
from __future__ import annotations

import pytest

from planner.rfb import BYTES_PER_PIXEL, Framebuffer
from planner.watermark import END_SUM, Marks, MarkTracker, decode, decode_line, draw_line

WIDTH, HEIGHT = 256, 64


def framebuffer_with(code: int, start: int, end: int, background=(90, 90, 90)) -> Framebuffer:
    """A framebuffer whose region shows the three lines, written as the server sends pixels (B, G, R, X rows)."""
    pixels = {}
    for line, value in enumerate((code, start, end)):
        draw_line(lambda x, y, c: pixels.__setitem__((x, y), c), line, value)
    fb = Framebuffer(WIDTH, HEIGHT)
    raw = bytearray()
    for y in range(HEIGHT):
        for x in range(WIDTH):
            r, g, b = pixels.get((x, y), background)
            raw += bytes((b, g, r, 0))
    fb.put_raw(0, 0, WIDTH, HEIGHT, bytes(raw))
    return fb


@pytest.mark.parametrize("code, start, end", [(11, 7, 0), (11, 7, 993), (0, 0, 0), (1023, 999, 1), (41, 512, 488)])
def test_decode_round_trip(code, start, end):
    assert decode(framebuffer_with(code, start, end).pixel) == Marks(code, start, end)


def test_an_unframed_region_decodes_to_nothing():
    fb = Framebuffer(WIDTH, HEIGHT)  # all black: block 0 is not white
    assert decode(fb.pixel) is None
    white = Framebuffer(WIDTH, HEIGHT)
    white.put_raw(0, 0, WIDTH, HEIGHT, b"\xff" * (WIDTH * HEIGHT * BYTES_PER_PIXEL))  # block 11 is not black
    assert decode_line(white.pixel, 0) is None


def test_blocks_are_read_at_their_centre_on_luminance():
    fb = framebuffer_with(5, 6, 0)
    # A dark-grey smear on the edge of block 10 (value bit 0 of line 1) does not change the value...
    fb.put_raw(160, 0, 2, 8, bytes((60, 60, 60, 0)) * 16)
    assert decode_line(fb.pixel, 0) == 5
    # ...a light grey over its centre reads as white (luminance > 127), a dark one as black.
    fb.put_raw(168, 0, 1, 1, bytes((200, 200, 200, 0)))
    fb.put_raw(168, 4, 1, 1, bytes((200, 200, 200, 0)))
    assert decode_line(fb.pixel, 0) == 5
    fb.put_raw(168, 4, 1, 1, bytes((20, 20, 20, 0)))
    assert decode_line(fb.pixel, 0) == 4


def test_copy_rect_moves_pixels():
    fb = framebuffer_with(0, 0, 0)
    source = framebuffer_with(3, 9, 0)
    line_2 = b"".join(bytes(source.data[(8 + i) * WIDTH * 4:((8 + i) * WIDTH + 192) * 4]) for i in range(8))
    fb.put_raw(0, 40, 192, 8, line_2)  # line 2 = 9, drawn at rows 40-47...
    fb.copy_rect(0, 8, 192, 8, 0, 40)  # ...and copied into place
    assert decode(fb.pixel) == Marks(0, 9, 0)


def test_draw_line_refuses_values_beyond_ten_bits():
    with pytest.raises(ValueError):
        draw_line(lambda *_: None, 0, 1024)


def test_tracker_times_start_and_end():
    tracker = MarkTracker()
    tracker.feed(Marks(0, 0, 0), 0.0)  # before the first operation
    tracker.feed(Marks(11, 7, 0), 1.0)
    tracker.feed(Marks(11, 7, 0), 1.5)  # repeated: the start keeps its first sighting
    assert tracker.take(7) is None  # not ended yet
    tracker.feed(Marks(11, 7, END_SUM - 7), 1.75)
    seen = tracker.take(7)
    assert (seen.code, seen.start_t, seen.end_t, seen.seconds) == (11, 1.0, 1.75, 0.75)
    assert tracker.take(7) is None  # taken once


def test_tracker_half_drawn_and_missed_states():
    tracker = MarkTracker()
    tracker.feed(Marks(12, 7, 993), 1.0)  # the previous op's lines, code already new: n=7 ended (no start seen)
    assert tracker.take(7).seconds is None
    tracker.feed(Marks(12, 8, 993), 2.0)  # line 2 drawn, line 3 not yet reset: neither start nor end of 8
    tracker.feed(Marks(12, 8, 0), 2.1)
    tracker.feed(Marks(12, 8, 992), 2.6)
    assert tracker.take(8).seconds == pytest.approx(0.5)
    # After a wrap n comes back: a new start replaces the old, finished observation.
    tracker.feed(Marks(21, 8, 0), 9.0)
    tracker.feed(Marks(21, 8, 992), 9.25)
    assert tracker.take(8).seconds == pytest.approx(0.25)


def test_guest_protocol_lines_and_replies():
    from planner.guest_protocol import GuestProtocolError, op_command, parse_apps, parse_op_reply

    assert op_command("word", "open", 7, 11) == "planner-op word open 7 11"
    for bad in (("../x", "open", 7, 11), ("word", "Open", 7, 11), ("word", "open", 1000, 11),
                ("word", "open", 7, 1024), ("word", "open", True, 11)):
        with pytest.raises(GuestProtocolError):
            op_command(*bad)
    assert parse_op_reply("ok 11 7 412345", 7, 11).guest_s == pytest.approx(0.412345)
    failed = parse_op_reply("FAIL 11 7 exit 1", 7, 11)
    assert (failed.ok, failed.reason, failed.guest_s) == (False, "exit 1", None)
    for reply in ("ERR no application word", "ok 12 7 5", "ok 11 7", "pong"):
        with pytest.raises(GuestProtocolError):
            parse_op_reply(reply, 7, 11)
    assert parse_apps("browser:browse word:open,type,save") == {"browser": ["browse"], "word": ["open", "type", "save"]}
    with pytest.raises(GuestProtocolError, match="no planner tools"):
        parse_apps("ERR no /opt/planner")


def test_the_compact_pixel_format_keeps_the_marks():
    """RGB332 (one byte a pixel): white and black stay exact, so the lines decode the same."""
    full = framebuffer_with(41, 512, 488)
    compact = Framebuffer(WIDTH, HEIGHT, compact=True)
    raw = bytearray()
    for y in range(HEIGHT):
        for x in range(WIDTH):
            r, g, b = full.pixel(x, y)
            raw.append((r >> 5) << 5 | (g >> 5) << 2 | b >> 6)
    compact.put_raw(0, 0, WIDTH, HEIGHT, bytes(raw))
    assert compact.pixel(0, 0) == (255, 255, 255) and compact.pixel(180, 0) == (0, 0, 0)
    assert decode(compact.pixel) == Marks(41, 512, 488)
