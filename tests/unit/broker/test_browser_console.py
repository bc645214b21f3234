"""The browser console's pure parts: which display a browser gets, and how the proxy tells a person's input from the
viewer's own traffic (the idle timeout). The proxy itself runs against real guests in
tests/integration/broker/test_browser_console.py."""
from __future__ import annotations

import struct

import pytest

from broker.errors import NoCommonProtocol
from broker.protocol import choose_protocol, with_browser_display
from core.enums import OsType, Protocol, ProtocolPolicy
from manager.console_proxy import InputWatch

S, R, V = Protocol.SPICE, Protocol.RDP, Protocol.VNC


def test_a_spice_desktop_shows_its_vnc_display_to_the_browser():
    assert with_browser_display([S]) == [S, V]
    assert with_browser_display([S, V]) == [S, V]
    assert with_browser_display([R]) == [R]  # an RDP-only desktop has no display for the browser
    choice = choose_protocol(os_type=OsType.DEBIAN_12, desktop_protocols=with_browser_display([S]),
                             client_protocols=[V], preferred=V)
    assert choice.protocol == V


def test_a_spice_only_pool_keeps_the_browser_out():
    with pytest.raises(NoCommonProtocol):
        choose_protocol(os_type=OsType.DEBIAN_12, desktop_protocols=with_browser_display([S]), client_protocols=[V],
                        policy=ProtocolPolicy.SPICE_ONLY, preferred=V)


def watched(*messages: bytes, chunk: int | None = None) -> InputWatch:
    watch = InputWatch()
    watch.last_input = 0.0
    data = b"".join(messages)
    step = chunk or len(data) or 1
    for i in range(0, len(data), step):
        watch.feed(data[i:i + step])
    return watch


UPDATE_REQUEST = struct.pack(">BBHHHH", 3, 1, 0, 0, 800, 600)
SET_ENCODINGS = struct.pack(">BBHiii", 2, 0, 3, 0, 1, -223)
KEY = struct.pack(">BBHI", 4, 1, 0, 0x61)
POINTER = struct.pack(">BBHH", 5, 0, 10, 20)
CUT = struct.pack(">BxxxI", 6, 5) + b"hello"


def test_update_requests_and_encodings_are_not_input():
    watch = watched(SET_ENCODINGS, UPDATE_REQUEST, UPDATE_REQUEST)
    assert watch.last_input == 0.0 and not watch.lost and watch.buffer == b""


@pytest.mark.parametrize("message", [KEY, POINTER, CUT], ids=["key", "pointer", "clipboard"])
def test_keys_pointer_and_clipboard_are_input(message):
    assert watched(UPDATE_REQUEST, message, UPDATE_REQUEST).last_input > 0


def test_messages_split_across_websocket_frames_are_followed():
    watch = watched(SET_ENCODINGS, UPDATE_REQUEST, chunk=3)
    assert watch.last_input == 0.0 and watch.buffer == b""
    assert watched(UPDATE_REQUEST, KEY, chunk=5).last_input > 0


def test_the_client_init_before_the_messages_is_skipped():
    watch = InputWatch(skip=1)
    watch.last_input = 0.0
    watch.feed(b"\x01" + UPDATE_REQUEST[:4])
    watch.feed(UPDATE_REQUEST[4:] + UPDATE_REQUEST)
    assert not watch.lost and watch.last_input == 0.0 and watch.buffer == b""


def test_an_unknown_message_counts_as_input_from_then_on():
    watch = watched(bytes([199, 0, 0, 0]))
    assert watch.lost and watch.last_input > 0
