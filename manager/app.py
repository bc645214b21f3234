"""The FastAPI application factory."""
from __future__ import annotations

import contextlib
import logging

from fastapi import APIRouter, FastAPI
from fastapi.responses import RedirectResponse

from manager import db
from manager.api.common import install_error_handlers
from manager.api.broker import router as broker_router
from manager.api.crud import crud_router
from manager.api.desktop_actions import router as desktop_actions_router
from manager.api.identity import router as identity_router
from manager.api.images import router as images_router
from manager.api.resources import RESOURCES
from manager.api.search import router as search_router
from manager.api.system import router as system_router
from manager.config import Settings, get_settings

API_PREFIX = "/api/v1"


def create_app(settings: Settings | None = None, *, configure_db: bool = True) -> FastAPI:
    settings = settings or get_settings()
    logging.basicConfig(level=settings.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if configure_db:
        db.configure(settings.effective_database_url)

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI):
        from manager.monitor import LivenessMonitor

        monitor = LivenessMonitor(settings.host_dead_after_seconds, period=min(5.0, settings.heartbeat_seconds))
        monitor.start()
        nodes = contextlib.ExitStack()
        if settings.embedded_nodes:
            from manager.embedded_nodes import EmbeddedNodes

            nodes.enter_context(EmbeddedNodes(settings.data_dir, settings.effective_public_url,
                                              heartbeat_seconds=settings.heartbeat_seconds))
        from image_manager.reconcile import reconcile_at_startup

        reconcile_at_startup(in_process_jobs=settings.embedded_jobs)
        try:
            yield
        finally:
            nodes.close()
            monitor.stop()

    app = FastAPI(title="VDI manager", version="0.1.0", lifespan=lifespan,
                  description="Desktop virtualization for KVM: hosts, templates, desktops, pools, a connection "
                              "broker, events and search. Every route needs a bearer token or a session cookie "
                              "except /health and /auth/login.",
                  docs_url="/docs", openapi_url="/openapi.json")
    install_error_handlers(app)
    api = APIRouter(prefix=API_PREFIX)
    api.include_router(system_router)
    api.include_router(broker_router)
    api.include_router(desktop_actions_router)
    api.include_router(identity_router)
    api.include_router(search_router)
    api.include_router(images_router)
    for resource in RESOURCES:
        api.include_router(crud_router(resource))
    app.include_router(api)

    @app.get("/", include_in_schema=False)
    def root() -> RedirectResponse:
        return RedirectResponse("/docs")

    return app
