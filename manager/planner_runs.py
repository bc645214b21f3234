"""The manager's side of the planner (issue 20, docs/planner.md): running a planner operation in a desktop through its
guest agent (the node's guest channel), and keeping runs: storing what the planner measured, reading it back as JSON,
CSV and the report. The planner itself (planner/) is a client of the API; the manager uses only its pure parts."""
from __future__ import annotations

import base64
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from core.errors import HypervisorError, Invalid
from manager.db import get_or_404
from manager.models import PlannerRun, PlannerSample, utcnow
from manager.provisioning import nodes
from manager.provisioning.screens import _on_node  # the running desktop's node, errors as for its screen and keys
from planner import report
from planner.guest_protocol import GuestProtocolError, OpResult, op_command, parse_apps, parse_op_reply
from planner.results import SAMPLE_FIELDS, samples_csv, summarise

APPS_TIMEOUT_S = 10.0


def _guest(session: Session, desktop_id: str, command: str, timeout: float) -> str:
    return _on_node(session, desktop_id, "guest agent to ask",
                    lambda target, desktop: nodes.guest(target, desktop.id, command, timeout))


def desktop_apps(session: Session, desktop_id: str) -> dict[str, list[str]]:
    """The planner applications of the running desktop and their operations (the agent's planner-apps)."""
    try:
        return parse_apps(_guest(session, desktop_id, "planner-apps", APPS_TIMEOUT_S))
    except GuestProtocolError as exc:
        raise Invalid(str(exc)) from None


def run_operation(session: Session, desktop_id: str, app: str, op: str, seq: int, code: int,
                  timeout: float) -> OpResult:
    """Run one planner operation in the running desktop and wait for it (the guest draws the watermark's start and
    end marks around it). A failed application is a result (ok False: the planner retries); a request the guest
    refuses (no such application) is Invalid (422); a reply outside the protocol a HypervisorError (502)."""
    try:
        command = op_command(app, op, seq, code)
    except GuestProtocolError as exc:
        raise Invalid(str(exc)) from None
    reply = _guest(session, desktop_id, command, timeout)
    try:
        return parse_op_reply(reply, seq, code)
    except GuestProtocolError as exc:
        if reply.startswith("ERR"):
            raise Invalid(str(exc)) from None
        raise HypervisorError(libvirt_code="-", detail=str(exc)) from None


def store_run(session: Session, data: dict[str, Any], actor: str) -> PlannerRun:
    """A finished run as the planner posts it (the API's schema checked the shapes); its scores and watermark figures
    are computed here from the samples, with the thresholds and definition it names."""
    summary = {**data["summary"], **summarise(data["samples"], data["threshold_a_s"], data["threshold_b_s"],
                                              data["definition"])}
    run = PlannerRun(name=data["name"], created_by=actor, mode=data["mode"], users=data["users"],
                     profile=data["profile"], summary=summary, finished_at=utcnow())
    session.add(run)
    session.flush()
    session.add_all(PlannerSample(run_id=run.id, **{k: s[k] for k in SAMPLE_FIELDS}) for s in data["samples"])
    session.flush()
    return run


def list_runs(session: Session, limit: int = 200) -> list[dict[str, Any]]:
    counts = dict(session.execute(select(PlannerSample.run_id, func.count()).group_by(PlannerSample.run_id)).all())
    runs = session.scalars(select(PlannerRun).order_by(PlannerRun.created_at.desc()).limit(limit)).all()
    return [{"id": r.id, "name": r.name, "created_at": r.created_at, "created_by": r.created_by, "mode": r.mode,
             "users": r.users, "score": (r.summary.get("scores") or {}).get("score"), "samples": counts.get(r.id, 0)}
            for r in runs]


def run_export(session: Session, run_id: str) -> dict[str, Any]:
    """The run with its samples, in the shape the planner posted (planner.results, planner.report read it)."""
    run = get_or_404(session, PlannerRun, run_id, "planner run")
    samples = session.scalars(select(PlannerSample).where(PlannerSample.run_id == run.id)
                              .order_by(PlannerSample.id)).all()
    return {"id": run.id, "name": run.name, "created_at": run.created_at.isoformat(), "created_by": run.created_by,
            "finished_at": run.finished_at.isoformat() if run.finished_at else None, "mode": run.mode,
            "users": run.users, "profile": run.profile, "summary": run.summary,
            "samples": [{k: getattr(s, k) for k in SAMPLE_FIELDS} for s in samples]}


def run_csv(session: Session, run_id: str) -> str:
    return samples_csv(run_export(session, run_id)["samples"])


def run_report_html(session: Session, run_id: str) -> str:
    """The report page with its figures inline (data: URIs), so the one response is the whole report."""
    run = run_export(session, run_id)
    sources = {name: "data:image/png;base64," + base64.b64encode(png).decode()
               for name, png in report.figures(run).items()}
    return report.render_html(run, sources)
