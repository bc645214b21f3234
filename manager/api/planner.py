"""The planner's routes (issue 20, docs/planner.md): planner operations run in a desktop through its guest agent (the
planner's runner calls these while it drives a workload), and stored runs with their JSON and CSV exports and report.
planner:run is DesktopAdmin and up (it runs programs in desktops); planner:read adds HelpDesk."""
from __future__ import annotations

import math
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends
from fastapi.responses import HTMLResponse, Response
from pydantic import Field, field_validator

from manager import planner_runs
from manager.api import schemas as s
from manager.api.common import DbSession
from manager.api.openapi import NODE_ERRORS, error_responses
from manager.auth import Principal, require
from planner.guest_protocol import MAX_CODE, MAX_SEQ, NAME

router = APIRouter()
Runner = Annotated[Principal, Depends(require("planner:run"))]
Reader = Annotated[Principal, Depends(require("planner:read"))]
Name = Annotated[str, Field(pattern=f"^{NAME.pattern}$", examples=["word"])]
MAX_SAMPLES = 200_000


class OperationIn(s.In):
    app: Name
    op: Name
    seq: Annotated[int, Field(ge=1, le=MAX_SEQ, description="the watermark's start mark n (end mark 1000 - n)")]
    code: Annotated[int, Field(ge=0, le=MAX_CODE, description="the watermark's event code: app id x 10 + op id")]
    timeout_s: Annotated[float, Field(gt=0, le=300, description="how long to wait for the operation")] = 60.0


class OperationOut(s.Out):
    ok: bool = Field(description="false: the application ran and failed (retry it)")
    code: int
    seq: int
    guest_s: float | None = Field(description="the guest's monotonic-clock time between its start and end marks")
    reason: str


class AppsOut(s.Out):
    desktop_id: str
    apps: dict[str, list[str]]


class SampleIn(s.In):
    users: Annotated[int, Field(ge=1, le=100_000)]
    desktop: Annotated[str, Field(min_length=1, max_length=255)]
    iteration: Annotated[int, Field(ge=0, le=1_000_000)]
    seq: Annotated[int, Field(ge=0, le=MAX_SEQ)]
    app: Name
    operation: Name
    group: Literal["A", "B", "C"]
    code: Annotated[int, Field(ge=0, le=MAX_CODE)]
    started_s: Annotated[float, Field(ge=0, le=1e7)]
    guest_s: Annotated[float | None, Field(ge=0, le=1e6)] = None
    client_s: Annotated[float | None, Field(ge=0, le=1e6)] = None
    end_mark_seen: bool = False
    ok: bool
    attempts: Annotated[int, Field(ge=1, le=100)] = 1
    error: Annotated[str, Field(max_length=2000)] = ""

    @field_validator("started_s", "guest_s", "client_s")
    @classmethod
    def _finite(cls, value: float | None) -> float | None:
        if value is not None and not math.isfinite(value):
            raise ValueError("must be a finite number of seconds")
        return value


class AdminOperationIn(s.In):
    count: Annotated[int, Field(ge=0, le=1_000_000)]
    seconds: Annotated[float, Field(ge=0, le=1e7)]
    rate_per_s: Annotated[float | None, Field(ge=0, le=1e6)] = None
    median_s: Annotated[float | None, Field(ge=0, le=1e7)] = None
    max_s: Annotated[float | None, Field(ge=0, le=1e7)] = None
    errors: Annotated[int, Field(ge=0, le=1_000_000)] = 0
    error_messages: Annotated[list[Annotated[str, Field(max_length=2000)]], Field(max_length=20)] = []


class HostPointIn(s.In):
    host: Annotated[str, Field(max_length=255)]
    t: Annotated[float, Field(ge=0, le=1e7)]
    cpu: Annotated[float, Field(ge=0, le=100)]
    mem: Annotated[float, Field(ge=0, le=100)]


class RunSummaryIn(s.In):
    """What only the planner saw; the scores and the watermark figures the manager computes from the samples."""
    flagged: Annotated[dict[str, Annotated[list[Annotated[str, Field(max_length=2000)]], Field(max_length=100)]],
                       Field(max_length=10_000)] = {}
    watchdog: Annotated[list[Annotated[str, Field(max_length=255)]], Field(max_length=10_000)] = []
    admin: Annotated[dict[str, AdminOperationIn], Field(max_length=50)] = {}
    host_stats: Annotated[list[HostPointIn], Field(max_length=100_000)] = []


class RunIn(s.In):
    name: Annotated[str, Field(max_length=255)] = ""
    mode: Literal["local", "remote", "passive"]
    users: Annotated[int, Field(ge=1, le=100_000)]
    threshold_a_s: Annotated[float, Field(gt=0, le=3600)] = 1.5
    threshold_b_s: Annotated[float, Field(gt=0, le=3600)] = 1.5
    definition: Literal["run", "desktop"] = "run"
    profile: dict[str, Any] = Field(default_factory=dict, description="the run and workload profiles as used")
    summary: RunSummaryIn = Field(default_factory=RunSummaryIn)
    samples: Annotated[list[SampleIn], Field(max_length=MAX_SAMPLES)]


class RunRef(s.Out):
    id: str
    report: str


class RunListItem(s.Out):
    id: str
    name: str
    created_at: Any
    created_by: str
    mode: str
    users: int
    score: int | None
    samples: int


@router.get("/desktops/{desktop_id}/planner/apps", response_model=AppsOut,
            responses={**NODE_ERRORS, **error_responses(409)},
            tags=["planner"])
def desktop_apps(desktop_id: str, session: DbSession, who: Runner) -> Any:
    """The planner applications of the running desktop and their operations (409 when it is not running, 422 when it
    has no planner tools)."""
    return AppsOut(desktop_id=desktop_id, apps=planner_runs.desktop_apps(session, desktop_id))


@router.post("/desktops/{desktop_id}/planner/op", response_model=OperationOut, responses=NODE_ERRORS,
             tags=["planner"])
def run_operation(desktop_id: str, body: OperationIn, session: DbSession, who: Runner) -> Any:
    """Run one planner operation in the running desktop and answer when it ended: the guest draws the watermark's
    start mark n, runs the application, draws the end mark 1000 - n (docs/planner.md "Guest protocol"). ok false:
    the application failed (retry it); 422: the desktop has no such application."""
    result = planner_runs.run_operation(session, desktop_id, body.app, body.op, body.seq, body.code, body.timeout_s)
    return OperationOut(ok=result.ok, code=result.code, seq=result.seq, guest_s=result.guest_s, reason=result.reason)


@router.post("/planner/runs", response_model=RunRef, status_code=201, tags=["planner"])
def store_run(body: RunIn, session: DbSession, who: Runner) -> Any:
    """Keep a finished run (what `vdi planner run` and `sweep` measured) for its report and exports."""
    run = planner_runs.store_run(session, body.model_dump(), who.name)
    return RunRef(id=run.id, report=f"/api/v1/planner/runs/{run.id}/report")


@router.get("/planner/runs", response_model=list[RunListItem], tags=["planner"])
def list_runs(session: DbSession, who: Reader) -> Any:
    """The newest 200 runs, newest first."""
    return planner_runs.list_runs(session)


@router.get("/planner/runs/{run_id}", tags=["planner"])
def get_run(run_id: str, session: DbSession, who: Reader) -> dict[str, Any]:
    """The run with every sample (the JSON export)."""
    return planner_runs.run_export(session, run_id)


@router.get("/planner/runs/{run_id}/samples.csv", response_class=Response, tags=["planner"],
            responses={200: {"content": {"text/csv": {}}, "description": "one row per operation measured"}})
def run_csv(run_id: str, session: DbSession, who: Reader) -> Response:
    """The run's samples as CSV (the CSV export)."""
    return Response(planner_runs.run_csv(session, run_id), media_type="text/csv",
                    headers={"Content-Disposition": f'attachment; filename="planner-{run_id}.csv"'})


@router.get("/planner/runs/{run_id}/report", response_class=HTMLResponse, tags=["planner"],
            responses={200: {"content": {"text/html": {}}, "description": "the report, figures inline"}})
def run_report(run_id: str, session: DbSession, who: Reader) -> HTMLResponse:
    """The run's report: score, runs, admin operations and the five figures (PNG, inline)."""
    return HTMLResponse(planner_runs.run_report_html(session, run_id), headers={"Cache-Control": "no-store"})
