"""Logging set-up: plain text (default) or one JSON object per line (VDI_LOG_FORMAT=json), each record carrying the
request id and correlation id of the work it belongs to.

`RequestIds` (pure ASGI middleware) gives every HTTP request an id: the caller's X-Request-ID when it is a short
token, else a new one, sent back in the response's X-Request-ID. The correlation id ties together the work one
action causes: the caller's X-Correlation-ID, else the request id; jobs queued by the request keep it
(Job.correlation_id, manager/jobs.py) and their log records carry it while they run."""
from __future__ import annotations

import contextvars
import datetime as dt
import json
import logging
import re
import uuid
from typing import Any

request_id: contextvars.ContextVar[str] = contextvars.ContextVar("vdi_request_id", default="")
correlation_id: contextvars.ContextVar[str] = contextvars.ContextVar("vdi_correlation_id", default="")

_TOKEN = re.compile(r"[A-Za-z0-9._:-]{1,64}")


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time (UTC, ISO 8601), level, logger, message, request_id and correlation_id
    when the record belongs to a request or a job, and the traceback (exc) when there is one."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": dt.datetime.fromtimestamp(record.created, dt.timezone.utc).isoformat(timespec="milliseconds"),
            "level": record.levelname, "logger": record.name, "message": record.getMessage()}
        for key, var in (("request_id", request_id), ("correlation_id", correlation_id)):
            if var.get():
                out[key] = var.get()
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, ensure_ascii=False)


def configure_logging(level: str, fmt: str = "text") -> None:
    """The root logger's one handler, on stderr, in the chosen format (every process: serve, worker, CLI)."""
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter() if fmt == "json"
                         else logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=level.upper(), handlers=[handler], force=fmt == "json")


def _presented(headers: list[tuple[bytes, bytes]], name: bytes) -> str:
    for key, value in headers:
        if key.lower() == name:
            text = value.decode("latin-1")
            return text if _TOKEN.fullmatch(text) else ""
    return ""


class RequestIds:
    """Pure ASGI middleware: the request id and correlation id of each HTTP request (see the module)."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = scope.get("headers") or []
        rid = _presented(headers, b"x-request-id") or uuid.uuid4().hex
        cid = _presented(headers, b"x-correlation-id") or rid
        rid_token, cid_token = request_id.set(rid), correlation_id.set(cid)

        async def send_ids(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), (b"x-request-id", rid.encode())]
            await send(message)

        try:
            await self.app(scope, receive, send_ids)
        finally:
            request_id.reset(rid_token)
            correlation_id.reset(cid_token)
