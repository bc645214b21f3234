"""The benchmarks' load generators speak HTTP/1.1 by hand over keep-alive asyncio connections: requests are
built as bytes before the clock starts and only the status line and Content-Length of an answer are read, so
the generator, which shares the machine's cores with the server it measures, costs little CPU."""
from __future__ import annotations

import asyncio


def post_json(path: str, host: str, token: str, body: bytes) -> bytes:
    """A complete `POST path` request with a bearer token and a JSON body."""
    return (f"POST {path} HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {token}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n").encode() + body


async def read_status(reader: asyncio.StreamReader) -> int:
    """Read one answer off the connection; its status code."""
    head = await reader.readuntil(b"\r\n\r\n")
    length = next((int(line[15:]) for line in head.split(b"\r\n") if line[:15].lower() == b"content-length:"), 0)
    await reader.readexactly(length)
    return int(head[9:12])
