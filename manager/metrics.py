"""Prometheus metrics (`GET /metrics`, the text exposition format; who may read them: manager/api/metrics.py).

Two kinds of figures:
* counters and histograms this process keeps as things happen: HTTP requests by route template (never the raw
  path, which would make one series per desktop id), status and latency; broker connects by outcome; events by
  code, and the HA actions among them (fences, restarts) as `vdi_ha_actions_total`;
* gauges read from the database at scrape time by `DatabaseCollector` (a few grouped counts): hosts by status,
  desktops by power state, jobs by kind and state, each host's heartbeat age.

Several processes (`vdi serve --workers N`, several managers): each process counts its own requests. With
PROMETHEUS_MULTIPROC_DIR set (a directory `vdi serve` empties as it starts) prometheus-client adds up the counters of
every worker of that `vdi serve` in each scrape; otherwise scrape every process. The database gauges are the same
from any process; the HA actions are counted by the leader, whose singleton loops take them.
"""
from __future__ import annotations

import os
import time
from pathlib import Path
from collections.abc import Iterable
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy import func, select

from manager import db
from manager.models import Desktop, Host, Job, utcnow

__all__ = ["CONTENT_TYPE_LATEST", "MetricsMiddleware", "count_connect", "exposition", "on_events"]

# One registry of this module's own (not prometheus-client's global one, which a library may also fill).
REGISTRY = CollectorRegistry(auto_describe=True)

REQUESTS = Counter("vdi_http_requests", "HTTP requests answered, by method, route template and status",
                   ("method", "route", "status"), registry=REGISTRY)
LATENCY = Histogram("vdi_http_request_duration_seconds", "time to answer an HTTP request, by method and route template",
                    ("method", "route"), registry=REGISTRY,
                    buckets=(.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30))
CONNECTS = Counter("vdi_broker_connects", "broker connects (a console for a pool or desktop), by channel and outcome "
                   "(ok, or the error code)", ("via", "outcome"), registry=REGISTRY)
EVENTS = Counter("vdi_events", "events recorded (committed) by this process, by code", ("code",), registry=REGISTRY)
HA_ACTIONS = Counter("vdi_ha_actions", "host HA actions taken by this process (the leader): fences and restarts, "
                     "by action and outcome", ("action", "outcome"), registry=REGISTRY)

# Which events are HA actions: code -> (action, outcome).
_HA_CODES = {"host.fenced": ("fence", "ok"), "host.fence_failed": ("fence", "failed"),
             "ha.fencing_skipped": ("fence", "skipped"),
             "desktop.ha_restarted": ("restart", "ok"), "desktop.ha_restart_failed": ("restart", "failed")}


def on_events(codes: Iterable[str]) -> None:
    """Listener of event_manager.service: the codes of the events a transaction committed."""
    for code in codes:
        EVENTS.labels(code).inc()
        action = _HA_CODES.get(code)
        if action is not None:
            HA_ACTIONS.labels(*action).inc()


class count_connect:  # noqa: N801 (used as a context manager, like a function)
    """`with count_connect("api"): ...` counts one broker connect, by its outcome (ok, or the error's code)."""

    def __init__(self, via: str) -> None:
        self.via = via

    def __enter__(self) -> None:
        return None

    def __exit__(self, exc_type, exc, _tb) -> bool:
        outcome = "ok" if exc is None else getattr(exc, "code", None) or "error"
        CONNECTS.labels(self.via, outcome).inc()
        return False


class DatabaseCollector(Collector):
    """Gauges read at scrape time: a few grouped counts, each over an indexed column."""

    def collect(self) -> Iterable[GaugeMetricFamily]:
        hosts = GaugeMetricFamily("vdi_hosts", "hosts by status", labels=("status",))
        desktops = GaugeMetricFamily("vdi_desktops", "desktops by power state", labels=("power_state",))
        jobs = GaugeMetricFamily("vdi_jobs", "jobs in the database by kind and state", labels=("kind", "state"))
        lag = GaugeMetricFamily("vdi_host_heartbeat_age_seconds",
                                "seconds since each host's last heartbeat was received", labels=("host",))
        now = utcnow()
        with db.session_scope() as session:
            for status, n in session.execute(select(Host.status, func.count()).group_by(Host.status)):
                hosts.add_metric((_value(status),), n)
            for state, n in session.execute(select(Desktop.power_state, func.count()).group_by(Desktop.power_state)):
                desktops.add_metric((_value(state),), n)
            for kind, state, n in session.execute(select(Job.kind, Job.state, func.count())
                                                  .group_by(Job.kind, Job.state)):
                jobs.add_metric((kind, _value(state)), n)
            for name, seen in session.execute(select(Host.name, Host.last_heartbeat_at)
                                              .where(Host.last_heartbeat_at.is_not(None))):
                lag.add_metric((name,), max(0.0, (now - seen).total_seconds()))
        return [hosts, desktops, jobs, lag]

    def describe(self) -> Iterable[Any]:
        return []  # read at scrape time only (never when the collector is registered)


def _value(enum_or_str: Any) -> str:
    return str(getattr(enum_or_str, "value", enum_or_str))


def exposition() -> bytes:
    """The text exposition of every metric: this process's (or, with PROMETHEUS_MULTIPROC_DIR, every process's)
    counters and the database gauges."""
    registry = REGISTRY
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
    return generate_latest(registry) + generate_latest(_DB_REGISTRY)


def reset_multiprocess_dir() -> None:
    """`vdi serve`, before its workers start: PROMETHEUS_MULTIPROC_DIR (when set) exists and holds no counts of
    earlier processes (prometheus-client adds up every file in it)."""
    path = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if path:
        Path(path).mkdir(parents=True, exist_ok=True)
        for stale in Path(path).glob("*.db"):
            stale.unlink()


_DB_REGISTRY = CollectorRegistry(auto_describe=False)
_DB_REGISTRY.register(DatabaseCollector())


class MetricsMiddleware:
    """Pure ASGI middleware: counts each HTTP request by the template of the route that answered it
    (`/api/v1/desktops/{desktop_id}`; `unmatched` when none did), its status and its duration."""

    def __init__(self, app: Any, fastapi_app: Any) -> None:
        self.app, self.fastapi_app = app, fastapi_app
        self._templates: dict[int, str] | None = None

    def _template(self, route: Any) -> str:
        """The route's full path template. Routes of included routers know only their own part of it
        (`/desktops/{item_id}`), so the full ones are looked up once, by route, from the application's tree."""
        if route is None:
            return "unmatched"
        if self._templates is None:
            from manager.api.guard import api_routes

            self._templates = {id(r): path for path, r in api_routes(self.fastapi_app) if path}
        return self._templates.get(id(route)) or getattr(route, "path", "") or "unmatched"

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = [500]

        async def send_status(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        started = time.perf_counter()
        try:
            await self.app(scope, receive, send_status)
        finally:
            route = self._template(scope.get("route"))
            method = scope.get("method", "")
            REQUESTS.labels(method, route, str(status[0])).inc()
            LATENCY.labels(method, route).observe(time.perf_counter() - started)
