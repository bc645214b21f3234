"""Jobs: the list (/admin/jobs, GET /api/v1/jobs's pages) and a job's page (progress, ETA, what it worked on,
its result or error, and its events)."""
from __future__ import annotations

import json
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import HTMLResponse
from sqlalchemy.orm import Session

from core.enums import JobState
from core.errors import Invalid
from manager.api.common import DbSession, PageParams
from manager.api.system import jobs_page
from manager.auth import Principal, require
from manager.jobs import eta_seconds
from manager.models import Job
from manager.web.admin.objects import PAGE_KINDS, Fact, ObjectKind, href, object_fact
from manager.web.related import READERS
from manager.web.render import page

JOBS_PER_PAGE = 50
def target_href(job: Any) -> str | None:
    """The page of the object the job works on (its target_kind is that object's noun), if it has one."""
    if job.target_kind in PAGE_KINDS and job.target_id:
        return href(PAGE_KINDS[job.target_kind][0], job.target_id)
    return None


def _eta(seconds: float | None) -> str | None:
    if seconds is None:
        return None
    minutes, secs = divmod(int(round(seconds)), 60)
    return f"about {minutes} min {secs} s" if minutes else f"about {secs} s"


def _target_fact(session: Session, j: Job, who: Principal) -> Fact:
    if target_href(j):
        return object_fact(session, who, "Works on", j.target_kind, j.target_id)
    return Fact("Works on", f"{j.target_kind.replace('_', ' ')} {j.target_id}".strip() or None)


def _json(value: dict[str, Any]) -> str | None:
    return json.dumps(value, indent=2, sort_keys=True, default=str) if value else None


def facts(session: Session, j: Job, who: Principal) -> list[Fact]:
    return [
        Fact("State", j.state, "state"), Fact("Kind", j.kind, "code"), Fact("Description", j.description),
        Fact("Progress", round(j.progress), "percent"), Fact("Done", f"{j.done} of {j.total}" if j.total else None),
        Fact("Time left", _eta(eta_seconds(j))),
        _target_fact(session, j, who),
        Fact("Error", j.error, "multiline", optional=True), Fact("Cancel requested", j.cancel_requested, "bool"),
        Fact("Started by", j.created_by), Fact("Created", j.created_at, "when"), Fact("Started", j.started_at, "when"),
        Fact("Finished", j.finished_at, "when"), Fact("Run by", j.owner, optional=True),
        Fact("Last sign of life", j.heartbeat_at, "when"),
        Fact("Parameters", _json(j.params), "pre", optional=True),
        Fact("Result", _json(j.result), "pre", optional=True),
        Fact("Correlation id", j.correlation_id, "code", optional=True), Fact("ID", j.id, "code"),
    ]


KIND = ObjectKind("jobs", "job", "jobs:read", READERS["jobs"][1],
                  lambda j: j.description or j.kind, facts, event_filter=lambda j: {"job_id": j.id}, plural="Jobs",
                  list_href="/admin/jobs")

list_router = APIRouter()


@list_router.get("/admin/jobs", response_class=HTMLResponse, include_in_schema=False)
def jobs_list(request: Request, session: DbSession, who: Annotated[Principal, Depends(require("jobs:read"))],
              state: Annotated[str, Query(max_length=32, description="a job state; empty: all")] = "",
              page_number: Annotated[int, Query(alias="page", ge=1, le=1_000_000)] = 1) -> HTMLResponse:
    try:
        wanted = JobState(state) if state else None
    except ValueError:
        raise Invalid(f"state: {state!r} is not a job state ({', '.join(s.value for s in JobState)})") from None
    found = jobs_page(session, PageParams(page=page_number, per_page=JOBS_PER_PAGE, sort=None, order="asc"),
                      state=wanted)
    return page(request, "admin/jobs.html", {"jobs": found, "wanted": state, "states": list(JobState),
                                             "target_href": target_href}, who=who)
