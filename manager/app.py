"""The FastAPI application factory."""
from __future__ import annotations

import contextlib
import functools
import importlib.resources

from fastapi import APIRouter, FastAPI, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html, get_swagger_ui_oauth2_redirect_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

from event_manager import service as event_service
from manager import db
from manager.api.common import install_error_handlers
from manager.api.broker import router as broker_router
from manager.api.browser_console import router as browser_console_router
from manager.api.alerts import router as alerts_router
from manager.api.crud import crud_router
from manager.api.dashboard import router as dashboard_router
from manager.api.guard import RequestGuard
from manager.api.event_stream import router as event_stream_router
from manager.api.ha import router as ha_router
from manager.api.metrics import router as metrics_router
from manager.api.notifications import router as notifications_router
from manager.api.planner import router as planner_router
from manager.api.policies import router as policies_router
from manager.api.desktop_actions import router as desktop_actions_router
from manager.api.identity import router as identity_router
from manager.api.hosts import router as hosts_router
from manager.api.images import router as images_router
from manager.api.openapi import install_error_docs
from manager.api.resources import RESOURCES
from manager.api.screens import router as screens_router
from manager.api.search import router as search_router
from manager.api.system import router as system_router
from manager.api.tags import router as tags_router
from manager.logs import RequestIds, configure_logging
from manager.metrics import MetricsMiddleware, on_events
from manager.config import Settings, get_settings
from manager.web import install_web

API_PREFIX = "/api/v1"
DOCS_ASSETS = "/static/api-docs"
# Swagger UI starts from an inline script and both UIs inject inline styles; ReDoc's search runs in a blob: worker.
DOCS_CSP = ("default-src 'self'; script-src 'self' 'unsafe-inline'; style-src 'self' 'unsafe-inline'; "
            "img-src 'self' data:; worker-src 'self' blob:; object-src 'none'; base-uri 'self'; "
            "frame-ancestors 'self'")


def _install_offline_docs(app: FastAPI) -> None:
    """/docs (Swagger UI) and /redoc with their JavaScript, CSS and favicon served by the manager itself, from the
    `fastapi-offline` package (pinned in pyproject.toml), instead of FastAPI's defaults on a CDN: data centres
    often have no internet access. ReDoc runs without Google Fonts for the same reason, and both pages carry a
    Content-Security-Policy that keeps the browser on this origin: ReDoc's side menu always shows the Redocly logo
    from cdn.redoc.ly (no option turns it off), which the policy refuses before any request is made."""
    assets = importlib.resources.files("fastapi_offline") / "static"
    app.mount(DOCS_ASSETS, StaticFiles(directory=str(assets)), name="api-docs-assets")
    oauth2_redirect = "/docs/oauth2-redirect"

    @app.get("/docs", include_in_schema=False)
    def swagger_ui(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        page = get_swagger_ui_html(openapi_url=f"{root}{app.openapi_url}", title=f"{app.title} - Swagger UI",
                                   swagger_js_url=f"{root}{DOCS_ASSETS}/swagger-ui-bundle.js",
                                   swagger_css_url=f"{root}{DOCS_ASSETS}/swagger-ui.css",
                                   swagger_favicon_url=f"{root}{DOCS_ASSETS}/favicon.png",
                                   oauth2_redirect_url=f"{root}{oauth2_redirect}",
                                   swagger_ui_parameters=app.swagger_ui_parameters)
        page.headers["Content-Security-Policy"] = DOCS_CSP
        return page

    @app.get(oauth2_redirect, include_in_schema=False)
    def swagger_ui_oauth2_redirect() -> HTMLResponse:
        return get_swagger_ui_oauth2_redirect_html()

    @app.get("/redoc", include_in_schema=False)
    def redoc(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        page = get_redoc_html(openapi_url=f"{root}{app.openapi_url}", title=f"{app.title} - ReDoc",
                              redoc_js_url=f"{root}{DOCS_ASSETS}/redoc.standalone.js",
                              redoc_favicon_url=f"{root}{DOCS_ASSETS}/favicon.png", with_google_fonts=False)
        page.headers["Content-Security-Policy"] = DOCS_CSP
        return page


def create_app(settings: Settings | None = None, *, configure_db: bool = True) -> FastAPI:
    settings = settings or get_settings()
    configure_logging(settings.log_level, settings.log_format)
    if configure_db:
        db.configure(settings.effective_database_url)

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI):
        from ha_manager.failover import HostFailover
        from event_manager.service import housekeeping as event_housekeeping
        from ha_manager.service import singleton_loop, start_manager_ha, stop_manager_ha
        from manager.identity.sync_tasks import scheduled_sync, scheduled_sync_period
        from policy_engine.service import loop_tick as policy_round
        from manager.jobs import recover_orphaned_jobs, recovery_period

        # The leader election; background loops run on the leader only, their writes fenced (docs/ha.md).
        start_manager_ha(settings)
        # Host liveness, fencing and HA restarts; the one place the host HA round is started.
        singleton_loop("host-ha", settings.ha_check_seconds, HostFailover(settings).run_cycle,
                       quiet_s=settings.ha_takeover_quiet_seconds)
        # Alert checks (storage, pools, directory sync) and the purge of events past their retention.
        singleton_loop("event-housekeeping", settings.event_housekeeping_seconds, functools.partial(
            event_housekeeping, retention_days=settings.event_retention_days,
            storage_percent=settings.alert_storage_percent, pool_percent=settings.alert_pool_percent))
        # The scheduled directory sync (VDI_AD_SYNC_INTERVAL_SECONDS): a "directory.sync" job whenever one is due.
        singleton_loop("directory-sync", scheduled_sync_period(), scheduled_sync)
        # The policy engine (policy_engine/, docs/policies.md): one round of every cluster's policies.
        singleton_loop("policies", settings.policy_seconds, functools.partial(
            policy_round, dead_after_seconds=settings.host_dead_after_seconds))
        # Jobs whose runner died (lease run out): resumed or failed with the reason, each kind as it registered.
        singleton_loop("job-recovery", recovery_period(), recover_orphaned_jobs)
        nodes = contextlib.ExitStack()
        if settings.embedded_nodes:
            from manager.embedded_nodes import EmbeddedNodes

            nodes.enter_context(EmbeddedNodes(settings.data_dir, settings.effective_public_url,
                                              heartbeat_seconds=settings.heartbeat_seconds))
        from image_manager.reconcile import reconcile_at_startup
        from manager.api.images import transfer_dirs

        for kind in ("import", "export"):
            transfer_dirs(kind, settings)  # there for an operator to put images in before the first import
        reconcile_at_startup(in_process_jobs=settings.embedded_jobs)
        from event_manager.service import start_notifications

        notifier = start_notifications(settings)
        try:
            yield
        finally:
            notifier.stop()
            nodes.close()
            stop_manager_ha()

    app = FastAPI(title="VDI manager", version="0.1.0", lifespan=lifespan,
                  description="Desktop virtualization for KVM: hosts, templates, desktops, pools, a connection "
                              "broker, events and search. Every route needs a bearer token or a session cookie "
                              "except /health and /auth/login.",
                  docs_url=None, redoc_url=None, openapi_url="/openapi.json")
    app.add_middleware(RequestGuard, fastapi_app=app, prefix=f"{API_PREFIX}/", max_body=settings.max_body_bytes)
    app.add_middleware(RequestIds)  # request and correlation ids for the log records of each request
    # outermost: also counts what the guard answers (route "unmatched")
    app.add_middleware(MetricsMiddleware, fastapi_app=app)
    event_service.on_commit(on_events)  # events (and the HA actions among them) counted as they commit
    install_error_handlers(app)
    install_error_docs(app, f"{API_PREFIX}/")
    _install_offline_docs(app)
    api = APIRouter(prefix=API_PREFIX)
    api.include_router(event_stream_router)
    api.include_router(system_router)
    api.include_router(broker_router)
    api.include_router(browser_console_router)
    api.include_router(desktop_actions_router)
    api.include_router(identity_router)
    api.include_router(search_router)
    api.include_router(tags_router)
    api.include_router(images_router)
    api.include_router(dashboard_router)
    api.include_router(hosts_router)
    api.include_router(ha_router)
    api.include_router(alerts_router)
    api.include_router(notifications_router)
    api.include_router(policies_router)
    api.include_router(screens_router)
    api.include_router(planner_router)
    for resource in RESOURCES:
        api.include_router(crud_router(resource))
    app.include_router(api)
    app.include_router(metrics_router)  # /metrics, where Prometheus looks by default

    install_web(app)
    return app
