"""policy_engine's public module: the policies of each cluster, one round (dry run or not), and the leader's loop.

    get_policies / put_policies       GET/PUT /api/v1/clusters/{id}/policies (validated by policy_engine.config)
    run_round(dry_run, cluster_id)    POST /api/v1/policies/run and the leader's "policies" loop: read a snapshot,
                                      decide (policy_engine.decide, pure), and unless a dry run, carry the decisions
                                      out with the existing jobs: desktops.migrate for a migration, policies.execute
                                      (policy_engine.tasks) for the rest
    loop_tick()                       the singleton loop's tick (manager/app.py starts it on the leader)

Every decision carried out is a `policy.decision` event with its reason, recorded when it is queued; a step that
fails later is a `policy.failed` event. A dry run records nothing and changes nothing.
"""
from __future__ import annotations

import datetime as dt
import json
import logging
from typing import Any

from pydantic import ValidationError
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from core import schedule
from core.enums import HostStatus, PowerState, SessionState, Severity, TaskState
from core.errors import Invalid, NotFound, VdiError
from event_manager.service import emit
from manager import db
from manager.jobs import enqueue
from manager.models import (Cluster, ClusterPolicy, Desktop, DesktopSession, FenceAgent, Host, PolicyBalloon,
                            PolicyHostState, Pool, utcnow)
from policy_engine.config import ClusterPolicies, parse
from policy_engine.decide import MIGRATE, Decision, DesktopSnap, HostSnap, PoolSnap, Snapshot, decide

log = logging.getLogger(__name__)
ACTOR = "policy engine"
STANDBY, WAKING = "standby", "waking"
EXECUTE_JOB = "policies.execute"


# ---- configuration ----------------------------------------------------------------------------------------------
def get_policies(session: Session, cluster_id: str) -> ClusterPolicies:
    if session.get(Cluster, cluster_id) is None:
        raise NotFound(kind="cluster", id=cluster_id)
    row = session.get(ClusterPolicy, cluster_id)
    return parse(row.config if row is not None else None)


def put_policies(session: Session, cluster_id: str, config: ClusterPolicies, *, actor: str) -> ClusterPolicies:
    """Store the cluster's policies (already validated). Invalid when the idle rules name a pool that does not
    exist or belongs to another cluster. Flushes; the caller commits."""
    cluster = session.get(Cluster, cluster_id)
    if cluster is None:
        raise NotFound(kind="cluster", id=cluster_id)
    pool_ids = list(config.idle_desktops.pools)
    if pool_ids:
        found = dict(session.execute(select(Pool.id, Pool.cluster_id).where(Pool.id.in_(pool_ids))).all())
        unknown = [p for p in pool_ids if p not in found]
        if unknown:
            raise Invalid(f"idle_desktops.pools names pools that do not exist: {', '.join(sorted(unknown))}")
        foreign = [p for p in pool_ids if found[p] not in (None, cluster_id)]
        if foreign:
            raise Invalid(f"idle_desktops.pools names pools of another cluster: {', '.join(sorted(foreign))}")
    row = session.get(ClusterPolicy, cluster_id)
    if row is None:
        row = ClusterPolicy(cluster_id=cluster_id)
        session.add(row)
    row.config, row.updated_at, row.updated_by = config.model_dump_json(), utcnow(), actor
    session.flush()
    enabled = [name for name in ("load_balancing", "power_saving", "idle_desktops")
               if getattr(config, name).enabled]
    if config.memory_density.ksm_enabled is not None or config.memory_density.balloon_enabled:
        enabled.append("memory_density")
    emit(session, "policy.configured", f"{actor} set the policies of cluster {cluster.name}: "
         f"{', '.join(enabled) or 'none'} enabled", actor=actor)
    return config


def _all_policies(session: Session, cluster_id: str | None) -> dict[str, ClusterPolicies]:
    stmt = select(ClusterPolicy.cluster_id, ClusterPolicy.config)
    if cluster_id is not None:
        stmt = stmt.where(ClusterPolicy.cluster_id == cluster_id)
    out = {}
    for cid, text in session.execute(stmt):
        try:
            out[cid] = parse(text)
        except ValidationError:  # stored by an older version with other fields: skipped, said once per round
            log.warning("cluster %s: stored policies no longer validate; skipped", cid)
    return out


# ---- the snapshot -----------------------------------------------------------------------------------------------
def next_window_opens(pool: Pool, now: dt.datetime) -> dt.datetime | None:
    """When the pool's calendar next opens after `now`: its recurring schedule (core.schedule) or its absolute
    window, whichever comes first; None when neither lies ahead."""
    candidates = []
    if pool.schedule:
        try:
            opening = schedule.next_opening(schedule.parse(pool.schedule), pool.time_zone or "UTC", now)
        except ValueError:
            opening = None
        if opening is not None:
            candidates.append(opening)
    if pool.window_start is not None and pool.window_start > now:
        candidates.append(pool.window_start)
    return min(candidates) if candidates else None


def snapshot(session: Session, cluster_id: str | None = None, now: dt.datetime | None = None) -> Snapshot:
    """Hosts, running desktops and pools as the decide function reads them (a handful of queries)."""
    now = now or utcnow()
    host_stmt = select(Host)
    if cluster_id is not None:
        host_stmt = host_stmt.where(Host.cluster_id == cluster_id)
    hosts = list(session.scalars(host_stmt))
    states = {s.host_id: s for s in session.scalars(select(PolicyHostState))}
    powered = set(session.scalars(select(FenceAgent.host_id).distinct()))
    host_snaps = []
    for h in hosts:
        state = states.get(h.id)
        status = h.status.value
        if state is not None and state.power == STANDBY:
            status = STANDBY
        elif state is not None and state.power == WAKING:
            status = WAKING
        applied = json.loads(state.ksm_applied) if state is not None and state.ksm_applied else None
        host_snaps.append(HostSnap(id=h.id, name=h.name, cluster_id=h.cluster_id, status=status, cpus=h.cpus or 1,
                                   memory_mib=h.memory_mib, cpu_usage=float(h.cpu_usage),
                                   free_memory_mib=h.free_memory_mib, has_power_agent=h.id in powered,
                                   migratable=bool(h.agent_url and h.libvirt_uri), ksm_applied=applied,
                                   powered_off_by_policy=status == STANDBY))
    host_ids = [h.id for h in hosts]
    rows = session.execute(select(Desktop.id, Desktop.name, Desktop.host_id, Desktop.pool_id, Desktop.power_state,
                                  Desktop.task_state, Desktop.cpus, Desktop.memory_mib, Desktop.cpu_usage,
                                  Desktop.started_at)
                           .where(Desktop.host_id.in_(host_ids), Desktop.power_state == PowerState.UP)).all()
    ids = [r.id for r in rows]
    connected = set(session.scalars(select(DesktopSession.desktop_id).where(
        DesktopSession.desktop_id.in_(ids), DesktopSession.state.in_([SessionState.CONNECTED,
                                                                      SessionState.PENDING])))) if ids else set()
    left = dict(session.execute(select(DesktopSession.desktop_id, func.max(DesktopSession.disconnected_at)).where(
        DesktopSession.desktop_id.in_(ids), DesktopSession.disconnected_at.is_not(None))
        .group_by(DesktopSession.desktop_id)).all()) if ids else {}
    balloons = {desktop_id: (target, set_at) for desktop_id, target, set_at in session.execute(
        select(PolicyBalloon.desktop_id, PolicyBalloon.target_mib, PolicyBalloon.set_at).where(
            PolicyBalloon.desktop_id.in_(ids)))} if ids else {}
    desktops = []
    for r in rows:
        since = left.get(r.id) if r.id not in connected else None
        balloon = balloons.get(r.id)
        if balloon is not None and r.started_at is not None and r.started_at > balloon[1]:
            balloon = None  # set before the guest's last boot, which gave it its whole memory again
        desktops.append(DesktopSnap(
            id=r.id, name=r.name, host_id=r.host_id, pool_id=r.pool_id, running=True,
            busy=r.task_state is not None, cpus=r.cpus, memory_mib=r.memory_mib, cpu_usage=float(r.cpu_usage),
            connected=r.id in connected,
            disconnected_minutes=(now - since).total_seconds() / 60.0 if since is not None else None,
            balloon_mib=balloon[0] if balloon is not None else None))
    pools = [PoolSnap(p.id, p.name, p.cluster_id, next_window_opens(p, now)) for p in session.scalars(select(Pool))]
    in_flight = session.scalar(select(func.count()).select_from(Desktop).where(
        Desktop.task_state == TaskState.MIGRATING)) or 0
    return Snapshot(now=now, hosts=host_snaps, desktops=desktops, pools=pools, migrations_in_flight=in_flight)


# ---- a round ----------------------------------------------------------------------------------------------------
def settle_waking_hosts(session: Session, dead_after_seconds: float) -> list[str]:
    """A host the engine powered on is taken out of maintenance once its node agent sends a heartbeat again (the
    host is back up); what was said."""
    from manager import host_maintenance

    said = []
    for state, host in session.execute(select(PolicyHostState, Host).join(Host, Host.id == PolicyHostState.host_id)
                                       .where(PolicyHostState.power == WAKING)).all():
        if host.last_heartbeat_at is None or state.power_since is None or host.last_heartbeat_at <= state.power_since:
            continue
        if host.status == HostStatus.MAINTENANCE:
            host_maintenance.activate(session, host.id, actor=ACTOR, dead_after_seconds=dead_after_seconds)
        state.power, state.power_since, state.ksm_applied = "", None, ""
        emit(session, "policy.host_back", f"host {host.name} is back from standby: its node agent sends heartbeats "
             "again", actor=ACTOR, host_id=host.id)
        said.append(host.name)
    return said


def run_round(*, dry_run: bool, cluster_id: str | None = None, actor: str = ACTOR,
              now: dt.datetime | None = None, dead_after_seconds: float = 30.0) -> dict[str, Any]:
    """One round: snapshot, decide, and (unless `dry_run`) queue the decisions as jobs. Returns
    {"dry_run", "cluster_id", "decisions": [...], "jobs": [...], "failed": [...]}; each decision carries its reason.
    NotFound for an unknown cluster."""
    if not dry_run:
        with db.session_scope() as session:
            settle_waking_hosts(session, dead_after_seconds)
    with db.session_scope() as session:
        if cluster_id is not None and session.get(Cluster, cluster_id) is None:
            raise NotFound(kind="cluster", id=cluster_id)
        policies = _all_policies(session, cluster_id)
        decisions = decide(snapshot(session, cluster_id, now), policies) if policies else []
    result: dict[str, Any] = {"dry_run": dry_run, "cluster_id": cluster_id,
                              "decisions": [d.to_dict() for d in decisions], "jobs": [], "failed": []}
    if dry_run or not decisions:
        return result
    rest: list[Decision] = []
    for decision in decisions:
        if decision.action != MIGRATE:
            rest.append(decision)
            continue
        job_id, error = _queue_migration(decision, actor)
        if job_id:
            result["jobs"].append(job_id)
        else:
            result["failed"].append({**decision.to_dict(), "error": error})
    if rest:
        with db.session_scope() as session:
            job = enqueue(session, EXECUTE_JOB, params={"decisions": [d.to_dict() for d in rest], "actor": actor},
                          created_by=actor, total=len(rest),
                          description=f"carry out {len(rest)} policy decision(s)")
            for decision in rest:
                _record(session, decision, actor, job.id)
            result["jobs"].append(job.id)
    return result


def _record(session: Session, decision: Decision, actor: str, job_id: str | None) -> None:
    emit(session, "policy.decision", f"{decision.policy}: {decision.reason}", actor=actor,
         desktop_id=decision.desktop_id, host_id=decision.host_id, job_id=job_id)


def _queue_migration(decision: Decision, actor: str) -> tuple[str | None, str]:
    from manager.provisioning.migration import request_migration

    try:
        with db.session_scope() as session:
            job = request_migration(session, decision.desktop_id, host_id=decision.target_host_id, actor=actor)
            session.flush()
            _record(session, decision, actor, job.id)
            job_id = job.id
        return job_id, ""
    except VdiError as exc:
        with db.session_scope() as session:
            failed(session, decision, exc.message)
        return None, exc.message


def failed(session: Session, decision: Decision | dict[str, Any], why: str) -> None:
    d = decision.to_dict() if isinstance(decision, Decision) else decision
    emit(session, "policy.failed", f"{d['policy']}: could not {d['action'].replace('_', ' ')} "
         f"{d.get('desktop') or d.get('host') or ''}: {why}", severity=Severity.WARNING, actor=ACTOR,
         desktop_id=d.get("desktop_id"), host_id=d.get("host_id"))


def loop_tick(dead_after_seconds: float = 30.0) -> str:
    """The leader's singleton loop: one round over every cluster with policies."""
    result = run_round(dry_run=False, dead_after_seconds=dead_after_seconds)
    return f"{len(result['decisions'])} decision(s), {len(result['jobs'])} job(s), {len(result['failed'])} failed"
