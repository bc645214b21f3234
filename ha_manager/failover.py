"""Host failover, one round at a time: liveness -> guards -> fence -> restart elsewhere (docs/ha.md).

`HostFailover.run_cycle()` is one pass and returns a sentence saying what it did (logged when it did something):
1. liveness (ha_manager.liveness): heartbeat ages, a direct probe of the late agents (outside any transaction),
   up -> connecting -> non_responsive;
2. guard: nobody is fenced while two or more hosts, at least VDI_HA_BROKEN_CONNECTIVITY_THRESHOLD of them, are
   unreachable together (the network failed: one event says so, per episode). Only the leader manager runs
   rounds, and not during the quiet period after a takeover (ha_manager.leader.SingletonLoop);
3. guard: a non-responsive host whose storage lease is still renewing (ha_manager.host_leases) lives on the storage
   and is not fenced (fence_state "releasing", host.fence_skipped); the manager asks it to release its guests
   (its agent powers them off once it has reached no manager for its self-fence time, hypervisor_node.host_lease),
   and when its lease records say "released", its HA desktops are queued (fence_state "released",
   host.guests_released). Until then they wait; a lease that stops renewing makes the host fenceable again;
4. fencing (ha_manager.fencing) of each non-responsive host, in parallel, claimed by compare-and-swap of its
   fence_state ("" -> fencing), so two managers never fence one host twice. A confirmed power-off queues the
   host's HA desktops; a failed fence restarts nothing (its desktops may still run) and is retried later;
5. where fencing is impossible (no fence agent, or every agent failed) and the hosts renew storage leases
   (ha_manager.host_leases), the lease's expiry is the proof instead: once a failed host's lease and heartbeats have
   been silent for the lease's ttl plus a margin, its agent has powered its guests off (self-fencing,
   hypervisor_node.host_lease), and its HA desktops are queued (fence_state "lease_expired");
6. restarts (ha_manager.restart) of the queued desktops on the surviving hosts.

Every step is an event (host.suspected, host.non_responsive [ALERT], host.fence_skipped, host.guests_released
[ALERT], host.fence_started, host.fenced, host.fence_failed
[ALERT], host.lease_wait, host.lease_expired [ALERT], ha.fencing_skipped [ALERT], desktop.ha_restarted, desktop.ha_restart_failed, desktop.ha_waiting
[ALERT], host.recovered). Every database write of a round happens on the calling thread (probes, fence agents
and node starts run in worker threads that only read), so the leader's epoch fence covers all of them.
"""
from __future__ import annotations

import datetime as dt
import json
import logging
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session

from core.enums import HostStatus, Severity
from core.errors import Invalid, NotFound, VdiError
from event_manager.service import emit
from ha_manager import fencing, host_leases, liveness, restart
from ha_manager.service import status_section
from manager import db
from manager.models import FenceAgent, Host, HostHaState, utcnow
from manager.node_secrets import open_sealed, seal

log = logging.getLogger(__name__)

# fence_state values
NONE, FENCING, FENCED, FAILED, SKIPPED = "", "fencing", "fenced", "failed", "skipped"
LEASE_EXPIRED = "lease_expired"  # not fenced, but its storage lease ran out: its guests are off (self-fenced)
RELEASING = "releasing"  # not fenced: its lease still renews; asked to release its guests
RELEASED = "released"  # its lease records say it released its guests
HANDLED = (FENCED, LEASE_EXPIRED, RELEASED)  # the host's desktops were taken over


def fence_configs(session: Session, host_id: str, host_name: str) -> list[fencing.AgentConfig]:
    """The host's fence agents in order, passwords opened."""
    agents = session.scalars(select(FenceAgent).where(FenceAgent.host_id == host_id)
                             .order_by(FenceAgent.position, FenceAgent.created_at)).all()
    return [fencing.AgentConfig(a.kind, a.address, a.port, a.username,
                                open_sealed(a.password_sealed, f"the fence agent {a.kind} {a.address} of {host_name}"),
                                fencing.parse_options(a.options)) for a in agents]


def probe_agent(host_id: str, timeout: float) -> bool:
    """Does the host's node agent answer GET /v1/health (it asks libvirt) within `timeout`?"""
    from manager.nodes.client import NodeClient
    from manager.provisioning import nodes

    with db.session_scope() as session:
        host = session.get(Host, host_id)
        if host is None:
            return False
        try:
            target = nodes.target_of_host(host)
        except VdiError:
            return False
    try:
        with NodeClient(target.url, target.token, timeout=timeout) as client:
            return client.health().get("status") == "ok"
    except VdiError:
        return False


class HostFailover:
    def __init__(self, settings, *, probe: Callable[[str], bool] | None = None,
                 fence: Callable[[Sequence[fencing.AgentConfig], float], fencing.FenceOutcome] = fencing.fence) -> None:
        self.settings = settings
        self.timings = liveness.LivenessTimings(settings.ha_connecting_after_seconds,
                                                settings.ha_non_responsive_after_seconds)
        self.probe = probe or (lambda host_id: probe_agent(host_id, settings.ha_probe_timeout_seconds))
        self.fence = fence
        self.leases = host_leases.LeaseWatch(settings.ha_host_lease_dir, settings.ha_host_lease_margin_seconds) \
            if settings.ha_host_lease_dir else None
        self._lease_wait_said: set[str] = set()  # hosts whose wait for the lease's expiry was announced

    # ---- one round --------------------------------------------------------------------------------------------
    def run_cycle(self) -> str:
        now = utcnow()
        with db.session_scope() as session:
            views = liveness.observe(session, now)
        late = liveness.to_probe(views, self.timings)
        probes = self._probe_all(late)
        with db.session_scope() as session:
            views = liveness.apply(session, views, probes, self.timings, now)
        if self.leases is not None:
            self.leases.observe(v.name for v in views)
        said = []
        judged = [v for v in views if v.status != HostStatus.MAINTENANCE and v.heartbeat_age is not None]
        unreachable = [v for v in judged if v.liveness != liveness.UP and v.fence_state not in HANDLED]
        failed = [v for v in judged if v.liveness == liveness.NON_RESPONSIVE]
        eligible = [v for v in failed if v.fence_state in (NONE, SKIPPED) or self._retry_due(v, now)]
        if eligible and fencing.connectivity_broken(len(unreachable), len(judged),
                                                    self.settings.ha_broken_connectivity_threshold):
            skipped = self._skip(eligible, unreachable, judged)
            said.append(f"fencing held back for {', '.join(skipped) or 'hosts already held back'}: "
                        f"{len(unreachable)} of {len(judged)} hosts unreachable")
        elif eligible or any(v.fence_state == RELEASING for v in failed):
            to_fence = eligible
            if self.leases is not None:
                said += self._lease_guard(failed, eligible)
                to_fence = [v for v in eligible if v.fence_state != RELEASING] + [
                    v for v in failed if v.fence_state == RELEASING
                    and not self.leases.verdict(v.name, v.heartbeat_age).renewing]
            if to_fence:
                said.append(self._fence_all(to_fence))
        if self.leases is not None:
            said += self._lease_expiries(failed)
        report = restart.restart_due(policy=self.settings.ha_placement_policy,
                                     parallel=self.settings.ha_restart_parallel,
                                     retry_seconds=self.settings.ha_restart_retry_seconds)
        if report.started:
            said.append(f"restarted {', '.join(report.started)}")
        if report.failed:
            said.append(f"restart failed for {', '.join(report.failed)}")
        if report.waiting:
            said.append(f"waiting for room: {', '.join(report.waiting)}")
        return "; ".join(said) or "all hosts judged"

    def _probe_all(self, host_ids: list[str]) -> dict[str, bool]:
        if not host_ids:
            return {}
        with ThreadPoolExecutor(max_workers=min(8, len(host_ids)), thread_name_prefix="vdi-ha-probe") as pool:
            return dict(zip(host_ids, pool.map(self.probe, host_ids)))

    def _retry_due(self, view: liveness.HostView, now: dt.datetime) -> bool:
        """A failed fence is tried again after VDI_HA_FENCE_RETRY_SECONDS; so is one left "fencing" that long (the
        manager that claimed it died or lost the leadership in the middle)."""
        if view.fence_state not in (FAILED, FENCING):
            return False
        with db.session_scope() as session:
            changed = session.scalar(select(HostHaState.fence_changed_at).where(HostHaState.host_id == view.host_id))
        return changed is None or (now - changed).total_seconds() >= self.settings.ha_fence_retry_seconds

    def _skip(self, eligible, unreachable, judged) -> list[str]:
        """Hold fencing back (fence_state skipped); one event per episode, naming the hosts and why. The episode is
        already open (and said) while an unreachable host is held back from an earlier round: hosts cut off together
        seldom all pass VDI_HA_NON_RESPONSIVE_AFTER_SECONDS in the same round."""
        now = utcnow()
        episode_open = any(v.fence_state == SKIPPED for v in unreachable)
        skipped = []
        with db.session_scope() as session:
            for view in eligible:
                if view.fence_state == SKIPPED:
                    continue
                if _swap_fence(session, view.host_id, view.fence_state, SKIPPED, now,
                               f"{len(unreachable)} of {len(judged)} hosts unreachable at once"):
                    skipped.append(view.name)
            if skipped and not episode_open:
                names = ", ".join(sorted(v.name for v in unreachable))
                emit(session, "ha.fencing_skipped", f"no host is fenced: {len(unreachable)} of {len(judged)} hosts "
                     f"({names}) are unreachable at once, at least "
                     f"{self.settings.ha_broken_connectivity_threshold:.0%} of them: that is the network, not the "
                     "hosts; their desktops are left where they are until the hosts answer again or fewer are "
                     "unreachable", severity=Severity.ALERT, actor="ha")
        return skipped

    def _lease_guard(self, failed: list[liveness.HostView], eligible: list[liveness.HostView]) -> list[str]:
        """No fencing while the host still renews its storage lease: hold it (releasing), ask it to release its
        guests, and take its desktops over once its lease says they are released. Updates the views' fence_state."""
        said = []
        now = utcnow()
        candidates = {v.host_id: v for v in eligible}
        candidates.update({v.host_id: v for v in failed if v.fence_state == RELEASING})
        for view in candidates.values():
            lease = self.leases.verdict(view.name, view.heartbeat_age)
            if not lease.renewing:
                continue  # dead, frozen or cut off the storage: fenced (or its lease's expiry awaited) as before
            asked = self.leases.request_release(view.name, lease.counter)
            with db.session_scope() as session:
                if view.fence_state != RELEASING:
                    if not _swap_fence(session, view.host_id, view.fence_state, RELEASING, now,
                                       "still renews its storage lease"):
                        continue
                    view.fence_state = RELEASING
                    emit(session, "host.fence_skipped", f"host {view.name} is not fenced: it still renews its "
                         f"storage lease (counter {lease.counter}), so it lives and may run its guests; "
                         + ("it is asked to release them (its agent powers them off once it has reached no manager "
                            "for its self-fence time); its desktops are restarted elsewhere once its lease says they "
                            "are released, or once the lease has expired" if asked else
                            "it cannot be asked to release them (the release request could not be written); its "
                            "desktops wait until it answers again or its lease has expired"),
                         severity=Severity.WARNING, actor="ha", host_id=view.host_id)
                    said.append(f"{view.name}: not fenced, still renews its lease")
                if not lease.released:
                    continue
                if not _swap_fence(session, view.host_id, RELEASING, RELEASED, now,
                                   f"released its guests (lease counter {lease.counter})"):
                    continue
                view.fence_state = RELEASED
                session.execute(update(Host).where(Host.id == view.host_id, Host.status != HostStatus.MAINTENANCE)
                                .values(status=HostStatus.DOWN, active_desktops=0))
                queued = restart.queue_restarts(session, view.host_id,
                                                restart_assigned=self.settings.ha_restart_assigned)
                emit(session, "host.guests_released", f"host {view.name} released its guests: its storage lease "
                     f"(counter {lease.counter}) says none runs there; {len(queued.restart)} desktop(s) to restart "
                     "elsewhere" + (f" ({', '.join(queued.restart)})" if queued.restart else "")
                     + (f"; not HA, left down: {', '.join(queued.left_down)}" if queued.left_down else ""),
                     severity=Severity.ALERT, actor="ha", host_id=view.host_id)
                said.append(f"{view.name}: released its guests")
        return said

    def _fence_all(self, eligible: list[liveness.HostView]) -> str:
        now = utcnow()
        claimed: list[tuple[liveness.HostView, list[fencing.AgentConfig] | None, str]] = []
        with db.session_scope() as session:
            for view in eligible:
                if not _swap_fence(session, view.host_id, view.fence_state, FENCING, now, ""):
                    continue
                try:
                    configs, error = fence_configs(session, view.host_id, view.name), ""
                except VdiError as exc:
                    configs, error = None, exc.message
                emit(session, "host.fence_started", f"fencing host {view.name} through "
                     f"{', '.join(f'{c.kind} {c.address}' for c in configs) if configs else 'no agent'}",
                     severity=Severity.WARNING, actor="ha", host_id=view.host_id)
                claimed.append((view, configs, error))
        if not claimed:
            return "fencing claimed by another manager"

        def run(item):
            view, configs, error = item
            if configs is None:
                return fencing.FenceOutcome(False, detail=error)
            return self.fence(configs, self.settings.ha_fence_timeout_seconds)

        with ThreadPoolExecutor(max_workers=len(claimed), thread_name_prefix="vdi-ha-fence") as pool:
            outcomes = list(pool.map(run, claimed))
        said = []
        with db.session_scope() as session:
            for (view, _configs, _error), outcome in zip(claimed, outcomes):
                said.append(self._record_fence(session, view, outcome))
        return "; ".join(said)

    def _record_fence(self, session: Session, view: liveness.HostView, outcome: fencing.FenceOutcome) -> str:
        now = utcnow()
        if not outcome.fenced:
            _swap_fence(session, view.host_id, FENCING, FAILED, now, outcome.detail[:4000])
            lease = self.leases.verdict(view.name, view.heartbeat_age) if self.leases is not None else None
            if lease is not None and lease.known:
                then = (f"its desktops are restarted elsewhere once its storage lease has expired (its agent powers "
                        f"its guests off before that), in about {lease.remaining_s:.0f} s, unless fencing succeeds "
                        "first")
            else:
                then = "its desktops are NOT restarted elsewhere (they may still run there; " + (
                    "its storage lease cannot be read" if lease is not None else "no host leases are configured") + ")"
            emit(session, "host.fence_failed", f"host {view.name} could not be fenced: {outcome.detail}; {then}; "
                 f"fencing is tried again in {self.settings.ha_fence_retry_seconds:.0f} s", severity=Severity.ALERT,
                 actor="ha", host_id=view.host_id)
            return f"fencing {view.name} failed"
        _swap_fence(session, view.host_id, FENCING, FENCED, now, f"{outcome.detail} in {outcome.seconds:.1f} s")
        session.execute(update(Host).where(Host.id == view.host_id, Host.status != HostStatus.MAINTENANCE)
                        .values(status=HostStatus.DOWN, active_desktops=0))
        queued = restart.queue_restarts(session, view.host_id, restart_assigned=self.settings.ha_restart_assigned)
        emit(session, "host.fenced", f"host {view.name} is fenced: {outcome.detail} ({outcome.seconds:.1f} s); "
             f"{len(queued.restart)} desktop(s) to restart elsewhere"
             + (f" ({', '.join(queued.restart)})" if queued.restart else "")
             + (f"; not HA, left down: {', '.join(queued.left_down)}" if queued.left_down else ""),
             severity=Severity.WARNING, actor="ha", host_id=view.host_id)
        return f"fenced {view.name}"


    def _lease_expiries(self, failed: list[liveness.HostView]) -> list[str]:
        """Failed hosts that could not be fenced: once the storage lease has expired (their guests are off), their
        desktops are taken over as after a fence; until then the wait is announced once."""
        said = []
        for view in failed:
            if view.fence_state != FAILED:
                self._lease_wait_said.discard(view.host_id)
                continue
            lease = self.leases.verdict(view.name, view.heartbeat_age)
            if not lease.expired:
                if lease.known and view.host_id not in self._lease_wait_said:
                    self._lease_wait_said.add(view.host_id)
                    with db.session_scope() as session:
                        emit(session, "host.lease_wait", f"host {view.name} cannot be fenced; its storage lease "
                             f"(ttl {lease.ttl_s:g} s) was last renewed {lease.silent_s:.0f} s ago: its desktops are "
                             f"restarted elsewhere once it has expired, in about {lease.remaining_s:.0f} s",
                             severity=Severity.WARNING, actor="ha", host_id=view.host_id)
                continue
            now = utcnow()
            with db.session_scope() as session:
                detail = (f"storage lease silent for {lease.silent_s:.0f} s (ttl {lease.ttl_s:g} s + margin "
                          f"{self.settings.ha_host_lease_margin_seconds:g} s), no heartbeat for "
                          f"{view.heartbeat_age or 0:.0f} s")
                if not _swap_fence(session, view.host_id, FAILED, LEASE_EXPIRED, now, detail):
                    continue
                queued = restart.queue_restarts(session, view.host_id,
                                                restart_assigned=self.settings.ha_restart_assigned)
                emit(session, "host.lease_expired", f"host {view.name} could not be fenced and its {detail}: by "
                     "the lease's terms its agent has powered its guests off (self-fencing) before now; "
                     f"{len(queued.restart)} desktop(s) to restart elsewhere"
                     + (f" ({', '.join(queued.restart)})" if queued.restart else "")
                     + (f"; not HA, left down: {', '.join(queued.left_down)}" if queued.left_down else ""),
                     severity=Severity.ALERT, actor="ha", host_id=view.host_id)
            self._lease_wait_said.discard(view.host_id)
            said.append(f"{view.name}: lease expired")
        return said


def _swap_fence(session: Session, host_id: str, old: str, new: str, now: dt.datetime, detail: str) -> bool:
    return bool(session.execute(update(HostHaState).where(HostHaState.host_id == host_id,
                                                          HostHaState.fence_state == old)
                                .values(fence_state=new, fence_changed_at=now, fence_detail=detail)).rowcount)


def record_self_fence(session: Session, host: Host, report: dict) -> None:
    """A node agent's first heartbeat after it self-fenced (hypervisor_node.host_lease) says so: one ALERT event."""
    guests = [str(g) for g in report.get("guests") or []][:50]
    emit(session, "host.self_fenced", f"host {host.name} powered its own guests off at {report.get('at', '?')} "
         f"({', '.join(guests) or 'none'}): "
         + ("a manager had asked it to release them (it still renewed its storage lease) and it had reached no "
            if report.get("on_request") else
            f"it had renewed no storage lease for {report.get('lease_age_seconds', '?')} s and reached no ")
         + f"manager for {report.get('manager_age_seconds', '?')} s (lease ttl {report.get('ttl_seconds', '?')} s)",
         severity=Severity.ALERT, actor="ha", host_id=host.id)


@status_section("hosts")
def host_states(session: Session) -> list[dict]:
    """Each host's liveness and fence state for the operator (GET /api/v1/ha "hosts"), by name."""
    rows = session.execute(select(Host.id, Host.name, Host.status, Host.last_heartbeat_at, HostHaState)
                           .outerjoin(HostHaState, HostHaState.host_id == Host.id).order_by(Host.name)).all()
    agents: dict[str, list[str]] = {}
    for host_id, kind, address in session.execute(select(FenceAgent.host_id, FenceAgent.kind, FenceAgent.address)
                                                  .order_by(FenceAgent.position)):
        agents.setdefault(host_id, []).append(f"{kind} {address}")
    from manager.config import get_settings

    lease_dir = get_settings().ha_host_lease_dir
    leases = host_leases.read_records(Path(lease_dir), [row[1] for row in rows]) if lease_dir else {}

    def lease_of(name: str) -> dict | None:
        if not lease_dir:
            return None  # leases are not read (VDI_HA_HOST_LEASE_DIR unset)
        record = leases.get(name)
        if record is None:
            return {"readable": False}
        return {"readable": True, "counter": record.counter, "ttl_seconds": record.ttl_s,
                "renew_seconds": record.renew_s, "released": record.released}

    return [{"host_id": host_id, "name": name, "status": status.value,
             "last_heartbeat_at": last.isoformat() if last else None,
             "liveness": state.liveness if state else liveness.UP,
             "liveness_since": state.liveness_since.isoformat() if state else None,
             "fence_state": state.fence_state if state else NONE,
             "fence_detail": state.fence_detail if state else "",
             "fence_changed_at": state.fence_changed_at.isoformat() if state and state.fence_changed_at else None,
             "fence_agents": agents.get(host_id, []), "storage_lease": lease_of(name)}
            for host_id, name, status, last, state in rows]


status_section("ha_restarts")(restart.waiting_restarts)  # the desktops waiting to start elsewhere


def set_fence_agents(session: Session, host_id: str, agents: Sequence[dict], *, actor: str) -> list[FenceAgent]:
    """Replace the host's fence agents (tried in the given order). Each dict: kind, address, port, username,
    password, options. Raises NotFound for an unknown host and Invalid for an unknown kind. Flushes."""

    host = session.get(Host, host_id)
    if host is None:
        raise NotFound(kind="host", id=host_id)
    for index, agent in enumerate(agents):
        if agent["kind"] not in fencing.KINDS:
            raise Invalid(f"agents[{index}].kind: {agent['kind']!r} is not a fence agent kind; use one of "
                          f"{', '.join(sorted(fencing.KINDS))}")
    session.execute(delete(FenceAgent).where(FenceAgent.host_id == host_id))
    rows = [FenceAgent(host_id=host_id, position=index, kind=agent["kind"], address=agent["address"],
                       port=agent.get("port") or 0, username=agent.get("username") or "",
                       password_sealed=seal(agent["password"]) if agent.get("password") else "",
                       options=json.dumps(agent.get("options") or {}))
            for index, agent in enumerate(agents)]
    session.add_all(rows)
    session.flush()
    emit(session, "host.fence_agents_set", f"{actor} set the fence agents of host {host.name}: "
         + (", ".join(f"{a.kind} {a.address}" for a in rows) or "none (the host cannot be fenced)"),
         actor=actor, host_id=host_id)
    return rows


def fence_agents_of(session: Session, host_id: str) -> list[dict]:
    """The host's fence agents as the API shows them (never the password: whether one is set)."""
    if session.get(Host, host_id) is None:
        raise NotFound(kind="host", id=host_id)
    return [{"kind": a.kind, "address": a.address, "port": a.port, "username": a.username,
             "password_set": bool(a.password_sealed), "options": fencing.parse_options(a.options)}
            for a in session.scalars(select(FenceAgent).where(FenceAgent.host_id == host_id)
                                     .order_by(FenceAgent.position))]
