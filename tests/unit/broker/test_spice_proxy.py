"""The SPICE proxy (`vdi spice-proxy`) with real sockets: a tunnel to a known display address and port carries bytes
both ways; anything else is refused with the status a client can act on."""
from __future__ import annotations

import asyncio
import socket

import pytest

from broker.spice_proxy import SpiceProxy, parse_port_range


async def _echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while data := await reader.read(1024):
        writer.write(data.upper())
        await writer.drain()
    writer.close()


async def _exchange(proxy_port: int, request: bytes, payload: bytes = b"") -> tuple[bytes, bytes]:
    """Send a request (and, after a 200, a payload); return the proxy's answer head and what came back."""
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy_port)
    writer.write(request)
    await writer.drain()
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    echoed = b""
    if head.startswith(b"HTTP/1.1 200") and payload:
        writer.write(payload)
        await writer.drain()
        while len(echoed) < len(payload):
            echoed += await asyncio.wait_for(reader.read(1024), 5)
    writer.close()
    return head, echoed


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def run_against_proxy(*cases: tuple[bytes, bytes], allowed=("127.0.0.1",), port_range: str | None = None):
    async def main():
        display = await asyncio.start_server(_echo, "127.0.0.1", 0)
        display_port = display.sockets[0].getsockname()[1]
        proxy = SpiceProxy(lambda: set(allowed), parse_port_range(port_range or f"{display_port}-{display_port + 1}"))
        _, proxy_port = await proxy.start("127.0.0.1", 0)
        server = asyncio.ensure_future(proxy.serve_forever())
        try:
            return [await _exchange(proxy_port, request.replace(b"PORT", str(display_port).encode()), payload)
                    for request, payload in cases]
        finally:
            server.cancel()
            display.close()

    return asyncio.run(main())


def test_a_tunnel_to_a_display_carries_bytes_both_ways():
    [(head, echoed)] = run_against_proxy((b"CONNECT 127.0.0.1:PORT HTTP/1.1\r\nHost: x\r\n\r\n", b"spice bytes"))
    assert head.startswith(b"HTTP/1.1 200")
    assert echoed == b"SPICE BYTES"


@pytest.mark.parametrize("request_text, status", [
    (b"CONNECT 10.9.9.9:PORT HTTP/1.1\r\n\r\n", b"403"),  # not a host's display address
    (b"CONNECT 127.0.0.1:22 HTTP/1.1\r\n\r\n", b"403"),  # a known address, but not a display port
    (b"GET http://127.0.0.1:PORT/ HTTP/1.1\r\n\r\n", b"405"),
    (b"CONNECT 127.0.0.1 HTTP/1.1\r\n\r\n", b"400"),
    (b"hello\r\n\r\n", b"400"),
])
def test_anything_but_a_display_is_refused(request_text, status):
    [(head, _)] = run_against_proxy((request_text, b""))
    assert head.split()[1] == status, head


def test_a_display_that_does_not_answer_is_a_502():
    port = _closed_port()
    [(head, _)] = run_against_proxy((f"CONNECT 127.0.0.1:{port} HTTP/1.1\r\n\r\n".encode(), b""),
                                    port_range=f"{port}-{port}")
    assert head.startswith(b"HTTP/1.1 502")


def test_port_ranges():
    assert parse_port_range("5900-65535") == range(5900, 65536)
    with pytest.raises(ValueError):
        parse_port_range("6000-5900")
