"""Health, events, jobs, template versions, node heartbeats and authentication."""
from __future__ import annotations

import datetime as dt
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request, Response
from pydantic import Field
from sqlalchemy import func, select, text
from sqlalchemy.orm import Session

from broker.sessions import ConsoleEvent, record_console_events
from core.enums import HostStatus, JobState, Severity
from core.errors import BadRequest, Conflict, Forbidden, Invalid, NotAuthenticated, NotFound
from event_manager.service import query_events
from ha_manager.failover import record_self_fence
from ha_manager.service import known_leader_epoch, learn_leader_epoch
from image_manager.service import get_template, template_versions
from manager import db
from manager.api import schemas as s
from manager.api.common import DbSession, Page, PageParams, Paging, paginate
from manager.api.openapi import error_responses
from manager.auth import (Principal, csrf_token, end_browser_session, issue_token, public, require,
                          start_browser_session, token_digest, token_lifetime_limit)
from manager.config import get_settings
from manager.heartbeat import ingest_heartbeat
from manager.jobs import enqueue, eta_seconds, request_cancel
from manager.models import ApiToken, Event, Host, Job, StorageDomain

router = APIRouter()


# ---- health -----------------------------------------------------------------------------------------
@router.get("/health", tags=["system"], dependencies=[Depends(public())])
def health(session: DbSession) -> dict[str, Any]:
    """Database, job broker and hypervisor nodes, each with a status."""
    settings = get_settings()
    report: dict[str, Any] = {}
    try:
        session.execute(text("SELECT 1"))
        report["db"] = {"status": "ok", "backend": session.get_bind().dialect.name}
    except Exception as exc:  # health must describe failures, not raise them
        report["db"] = {"status": "error", "detail": type(exc).__name__}
    if settings.embedded_jobs:
        report["redis"] = {"status": "not_configured", "detail": "embedded in-process job worker"}
    else:
        try:
            import redis

            redis.Redis.from_url(settings.redis_url, socket_timeout=2).ping()
            report["redis"] = {"status": "ok"}
        except Exception as exc:
            report["redis"] = {"status": "error", "detail": type(exc).__name__}
    counts = dict(session.execute(select(Host.status, func.count()).group_by(Host.status)).all()) \
        if report["db"]["status"] == "ok" else {}
    report["nodes"] = {"status": "ok" if not counts or counts.get(HostStatus.UP) else "degraded",
                       "total": sum(counts.values()), **{str(k): v for k, v in counts.items()}}
    bad = [name for name, part in report.items() if part["status"] == "error"]
    report["status"] = "error" if bad else "ok"
    return report


# ---- events -------------------------------------------------------------------------------------------
EventsRead = Annotated[Principal, Depends(require("events:read"))]


@router.get("/events", response_model=Page[s.EventOut], tags=["events"])
def list_events(session: DbSession, paging: Paging, who: EventsRead,
                severity: Severity | None = None, code: str | None = None, user_id: str | None = None,
                desktop_id: str | None = None, host_id: str | None = None, pool_id: str | None = None,
                template_id: str | None = None, job_id: str | None = None, correlation_id: str | None = None,
                since: dt.datetime | None = None, until: dt.datetime | None = None) -> dict[str, Any]:
    """Events, newest first, filtered by exact fields and a time window."""
    filters = {"severity": severity, "code": code, "user_id": user_id, "desktop_id": desktop_id,
               "host_id": host_id, "pool_id": pool_id, "template_id": template_id, "job_id": job_id,
               "correlation_id": correlation_id}
    return paginate(session, query_events(filters, since=since, until=until), paging, s.EventOut,
                    sortable={"time": Event.time, "severity": Event.severity, "code": Event.code})


# GET /events/stream is manager/api/event_stream.py (included before this router: /events/{event_id} would take it).


@router.get("/events/{event_id}", response_model=s.EventOut, tags=["events"])
def get_event(event_id: int, session: DbSession, who: EventsRead) -> Any:
    event = session.get(Event, event_id)
    if event is None:
        raise NotFound(kind="event", id=event_id)
    return s.EventOut.model_validate(event)


# ---- jobs -------------------------------------------------------------------------------------------------
def _job_out(job: Job) -> s.JobOut:
    out = s.JobOut.model_validate(job)
    out.eta_seconds = eta_seconds(job)
    return out


@router.get("/jobs", response_model=Page[s.JobOut], tags=["jobs"])
def list_jobs(session: DbSession, paging: Paging, who: Annotated[Principal, Depends(require("jobs:read"))],
              state: JobState | None = None, kind: str | None = None, target_id: str | None = None) \
        -> dict[str, Any]:
    """Jobs, newest first, with progress and an ETA while running."""
    return jobs_page(session, paging, state=state, kind=kind, target_id=target_id)


def jobs_page(session: Session, paging: PageParams, *, state: JobState | None = None, kind: str | None = None,
              target_id: str | None = None) -> dict[str, Any]:
    """One page of jobs matching the given fields, newest first, each with its ETA (GET /jobs, the jobs page)."""
    stmt = select(Job)
    if state is not None:
        stmt = stmt.where(Job.state == state)
    if kind:
        stmt = stmt.where(Job.kind == kind)
    if target_id:
        stmt = stmt.where(Job.target_id == target_id)
    page = paginate(session, stmt, paging, s.JobOut, sortable={"created_at": Job.created_at, "state": Job.state},
                    default_order=[Job.created_at.desc(), Job.id])
    page["items"] = [_job_out(session.get(Job, item.id)) for item in page["items"]]
    return page


@router.get("/jobs/{job_id}", response_model=s.JobOut, tags=["jobs"])
def get_job(job_id: str, session: DbSession, who: Annotated[Principal, Depends(require("jobs:read"))]) -> Any:
    job = session.get(Job, job_id)
    if job is None:
        raise NotFound(kind="job", id=job_id)
    return _job_out(job)


@router.post("/jobs/{job_id}/cancel", response_model=s.JobOut, tags=["jobs"])
def cancel_job(job_id: str, session: DbSession, who: Annotated[Principal, Depends(require("jobs:write"))]) -> Any:
    """Ask a job to stop; it stops at its next progress report."""
    job = session.get(Job, job_id)
    if job is None:
        raise NotFound(kind="job", id=job_id)
    if job.state not in (JobState.PENDING, JobState.RUNNING):
        raise Conflict(f"job {job_id} is already {job.state.value}")
    request_cancel(session, job)
    session.flush()
    return _job_out(job)


@router.post("/storage-domains/{domain_id}/refresh", response_model=s.JobOut, status_code=202,
             tags=["storage-domains"])
def refresh_storage_domain(domain_id: str, session: DbSession,
                           who: Annotated[Principal, Depends(require("storage:write"))]) -> Any:
    """Re-measure the domain's capacity and its volumes' sizes, as a job."""
    domain = session.get(StorageDomain, domain_id)
    if domain is None:
        raise NotFound(kind="storage domain", id=domain_id)
    job = enqueue(session, "storage.refresh", params={"storage_domain_id": domain.id},
                  description=f"refresh storage domain {domain.name}", created_by=who.name,
                  target_kind="storage_domain", target_id=domain.id)
    return _job_out(job)


# ---- template versions (read; the image manager creates them) ------------------------------------------------
@router.get("/templates/{template_id}/versions", response_model=list[s.TemplateVersionOut], tags=["templates"])
def list_template_versions(template_id: str, session: DbSession,
                           who: Annotated[Principal, Depends(require("templates:read"))]) -> Any:
    template = get_template(session, template_id)
    return [s.TemplateVersionOut.model_validate(r) for r in template_versions(session, template.id)]


# ---- node heartbeats ----------------------------------------------------------------------------------------
def node_token() -> Any:
    """Nodes authenticate with their own per-host bearer secret, not a user token."""

    def dependency(name: str, request: Request, session: DbSession) -> Host:
        host = session.scalar(select(Host).where(Host.name == name))
        presented = request.headers.get("authorization", "")[7:].strip()
        if host is None or not host.agent_token_matches(presented):
            raise NotAuthenticated("unknown host or wrong node token")
        return host

    dependency.permission = "node"  # type: ignore[attr-defined]
    return dependency


@router.post("/nodes/{name}/heartbeat", tags=["nodes"])
def heartbeat(name: str, payload: dict[str, Any], session: DbSession,
              host: Annotated[Host, Depends(node_token())]) -> dict[str, Any]:
    """A node's periodic report: host figures and every domain's stats. The reply names the latest leader epoch
    this manager knows, so the agent refuses commands of a former leader (docs/ha.md)."""
    if not isinstance(payload.get("domains", []), list):
        raise BadRequest("domains must be a list")
    learn_leader_epoch(payload.get("leader_epoch"))  # the highest the agent has heard
    if isinstance(payload.get("self_fenced"), dict):
        record_self_fence(session, host, payload["self_fenced"])
    return {"ok": True, **ingest_heartbeat(session, host, payload), "leader_epoch": known_leader_epoch()}


class ConsoleEventIn(s.In):
    desktop_id: Annotated[str, Field(min_length=1, max_length=64)]
    attached: bool = Field(description="true: the first console client attached; false: the last one left")
    at: dt.datetime = Field(description="when, by the host's clock (with a time zone)")
    protocol: Annotated[str, Field(max_length=16)] = ""
    client: Annotated[str, Field(max_length=255)] = ""


class ConsoleEventsIn(s.In):
    events: Annotated[list[ConsoleEventIn], Field(max_length=10_000)]


@router.post("/nodes/{name}/console-events", tags=["nodes"])
def console_events(name: str, payload: ConsoleEventsIn, session: DbSession,
                   host: Annotated[Host, Depends(node_token())]) -> dict[str, Any]:
    """A node's console clients attaching to and leaving its desktops' displays (libvirt graphics events): they
    make console sessions connected and disconnected. Events about desktops the host does not run are ignored."""
    events = []
    for e in payload.events:
        if e.at.tzinfo is None:
            raise Invalid(f"event time {e.at.isoformat()} has no time zone")
        events.append(ConsoleEvent(e.desktop_id, e.attached, e.at, e.protocol, e.client))
    return {"ok": True, **record_console_events(session, host.id, host.name, events)}


# ---- authentication -------------------------------------------------------------------------------------------
class LoginIn(s.In):
    username: str = Field(min_length=1, max_length=512, description="user, user@domain, UPN or DOMAIN\\user")
    password: str = Field(min_length=1, max_length=1024)


class TokenIn(s.In):
    name: str = Field(default="", max_length=255)
    lifetime_days: int | None = Field(default=None, ge=1, le=3650,
                                      description="days until it expires; default and upper bound: "
                                                  "VDI_API_TOKEN_MAX_DAYS (90)")
    password: str | None = Field(default=None, min_length=1, max_length=1024,
                                 description="your password again: the token is then your own and outlives the "
                                             "session (or token) that asked for it; without it, the new token "
                                             "expires with that credential and is revoked at its logout")


@router.post("/auth/login", tags=["auth"], dependencies=[Depends(public())],
             responses=error_responses(401, 403, 429, 503))
def login(payload: LoginIn, request: Request, response: Response, session: DbSession) -> dict[str, Any]:
    """Log in with a password; sets the session cookie and returns a bearer token for the same session."""
    user, secret = start_browser_session(session, request, response, payload.username, payload.password)
    return {"token": secret, "user_id": user.id, "username": user.username, "domain": user.domain,
            "csrf_token": csrf_token(secret)}


@router.post("/auth/logout", tags=["auth"], status_code=204)
def logout(request: Request, session: DbSession, who: Annotated[Principal, Depends(require("self:read"))]) -> Response:
    out = Response(status_code=204)
    end_browser_session(session, request, out)
    return out


@router.get("/auth/me", tags=["auth"])
def me(who: Annotated[Principal, Depends(require("self:read"))]) -> dict[str, Any]:
    return {"user_id": who.user_id, "username": who.username, "domain": who.domain,
            "roles": sorted(r.value for r in who.roles), "permissions": sorted(who.permissions)}


@router.post("/auth/tokens", tags=["auth"], status_code=201, responses=error_responses(429, 503))
def create_token(payload: TokenIn, request: Request, session: DbSession,
                 who: Annotated[Principal, Depends(require("self:read"))]) -> dict[str, Any]:
    """An API token for scripts, acting as you. The secret is shown once. It expires after lifetime_days (at most
    VDI_API_TOKEN_MAX_DAYS). Without `password`, it is bound to the credential this request presented: it expires
    no later and is revoked with it (a browser session's logout revokes what the session minted), so a stolen
    session cannot leave a token behind. With your password, it is independent of the session."""
    from manager.identity.login import authenticate_password
    from manager.models import User

    limit = token_lifetime_limit("api")
    if payload.lifetime_days is not None and dt.timedelta(days=payload.lifetime_days) > limit:
        raise Invalid(f"lifetime_days may be at most {limit.days} (VDI_API_TOKEN_MAX_DAYS)")
    parent_id, not_after = who.token_id, who.token_expires_at
    if payload.password is not None:
        client = request.client.host if request.client else ""
        try:
            confirmed = authenticate_password(session, f"{who.username}@{who.domain}", payload.password,
                                              client_address=client)
        except NotAuthenticated:
            raise Forbidden("that is not your password; send your own password, or none for a token that ends "
                            "with this session") from None
        if confirmed.id != who.user_id:
            raise Forbidden("that is not your password")
        parent_id, not_after = None, None
    user = session.get(User, who.user_id)
    lifetime = dt.timedelta(days=payload.lifetime_days) if payload.lifetime_days else None
    secret = issue_token(session, user, name=payload.name, kind="api", lifetime=lifetime, parent_id=parent_id,
                         not_after=not_after)
    token = session.scalar(select(ApiToken).where(ApiToken.token_hash == token_digest(secret)))
    return {"token": secret, "name": payload.name, "expires_at": token.expires_at,
            "bound_to": parent_id}
