"""The job that carries out a round's decisions other than migrations (those are desktops.migrate jobs):
suspend or shut down idle desktops, put an empty host into standby or bring it back through its power agent,
push KSM settings to a host and set balloon targets. One decision at a time; one that fails is a policy.failed
event and the others go on."""
from __future__ import annotations

import json
from typing import Any


from core.enums import HostStatus, PowerState
from core.errors import Conflict, VdiError
from event_manager.service import emit
from ha_manager.service import switch_host_power
from manager import db
from manager.jobs import JobContext, OnCrash, task
from manager.models import Desktop, Host, PolicyBalloon, PolicyHostState, utcnow
from policy_engine.decide import BALLOON, KSM, POWER_OFF, POWER_ON, SHUTDOWN, SUSPEND
from policy_engine.service import ACTOR, EXECUTE_JOB, STANDBY, WAKING, failed

POWER_TIMEOUT_S = 60.0


def _host_state(session, host_id: str) -> PolicyHostState:
    state = session.get(PolicyHostState, host_id)
    if state is None:
        state = PolicyHostState(host_id=host_id, power="", ksm_applied="")
        session.add(state)
    return state


def _idle_action(decision: dict[str, Any], actor: str) -> str:
    from manager.provisioning.power import PowerAction, run_power_action

    action = PowerAction.SUSPEND if decision["action"] == SUSPEND else PowerAction.STOP
    state = run_power_action(decision["desktop_id"], action, actor=actor)
    return f"desktop {decision.get('desktop')} is {state.value}"


def _standby(decision: dict[str, Any], actor: str) -> str:
    """Maintenance first (no desktop is placed or started there, and host liveness does not fence a host in
    maintenance), then the power-off through its power agent; a power-off that fails takes the host back."""
    from manager import host_maintenance
    from manager.config import get_settings

    host_id = decision["host_id"]
    with db.session_scope() as session:
        running = host_maintenance.running_desktops(session, host_id)
        if running:
            raise Conflict(f"desktops run on it again ({', '.join(running[:5])})")
        host_maintenance.enter_maintenance(session, host_id, actor=actor, reason="power saving: standby")
        state = _host_state(session, host_id)
        state.power, state.power_since, state.ksm_applied = STANDBY, utcnow(), ""
    try:
        how = switch_host_power(host_id, on=False, timeout=POWER_TIMEOUT_S)
    except VdiError:
        with db.session_scope() as session:
            _host_state(session, host_id).power = ""
            host_maintenance.activate(session, host_id, actor=actor,
                                      dead_after_seconds=get_settings().host_dead_after_seconds)
        raise
    with db.session_scope() as session:
        emit(session, "policy.host_standby", f"host {decision.get('host')} is in standby: {how}", actor=actor,
             host_id=host_id)
    return how


def _wake(decision: dict[str, Any], actor: str) -> str:
    host_id = decision["host_id"]
    how = switch_host_power(host_id, on=True, timeout=POWER_TIMEOUT_S)
    with db.session_scope() as session:
        state = _host_state(session, host_id)
        # back to up at its first heartbeat after now (policy_engine.service.settle_waking_hosts)
        state.power, state.power_since = WAKING, utcnow()
        emit(session, "policy.host_waking", f"host {decision.get('host')} is powered on: {how}; it returns to "
             "service at its first heartbeat", actor=actor, host_id=host_id)
    return how


def _node_of_host(host_id: str):
    from manager.provisioning import nodes

    with db.session_scope() as session:
        host = session.get(Host, host_id)
        if host is None or host.status != HostStatus.UP:
            raise Conflict("the host is not up")
        return nodes.target_of_host(host)


def _ksm(decision: dict[str, Any], _actor: str) -> str:
    from manager.provisioning import nodes

    target = _node_of_host(decision["host_id"])
    applied = nodes.client(target).set_ksm(decision["params"])
    with db.session_scope() as session:
        _host_state(session, decision["host_id"]).ksm_applied = json.dumps(decision["params"], sort_keys=True)
    return f"KSM settings now {applied}"


def _balloon(decision: dict[str, Any], _actor: str) -> str:
    from manager.provisioning import nodes

    desktop_id, target_mib = decision["desktop_id"], int(decision["params"]["memory_mib"])
    with db.session_scope() as session:
        desktop = session.get(Desktop, desktop_id)
        if desktop is None or desktop.power_state != PowerState.UP or desktop.task_state is not None:
            raise Conflict("the desktop is no longer running idle")
        target = nodes.target_of_desktop(session, desktop)
        full = desktop.memory_mib
    applied = nodes.client(target).resize(desktop_id, memory_mib=target_mib).get("memory_mib")
    if applied != "live":
        raise Conflict(f"the hypervisor did not take the balloon target of {target_mib} MiB live")
    with db.session_scope() as session:
        row = session.get(PolicyBalloon, desktop_id)
        if target_mib >= full:
            if row is not None:
                session.delete(row)
        elif row is None:
            session.add(PolicyBalloon(desktop_id=desktop_id, target_mib=target_mib))
        else:
            row.target_mib, row.set_at = target_mib, utcnow()
    return f"balloon target {target_mib} MiB"


ACTIONS = {SUSPEND: _idle_action, SHUTDOWN: _idle_action, POWER_OFF: _standby, POWER_ON: _wake, KSM: _ksm,
           BALLOON: _balloon}


@task(EXECUTE_JOB, on_crash=OnCrash.FAIL)
def execute(ctx: JobContext, decisions: list[dict[str, Any]], actor: str = ACTOR) -> dict[str, Any]:
    done: list[str] = []
    errors: list[str] = []
    ctx.progress(0, len(decisions), force=True)
    for n, decision in enumerate(decisions, start=1):
        ctx.check_cancelled()
        try:
            done.append(ACTIONS[decision["action"]](decision, actor))
        except VdiError as exc:
            errors.append(f"{decision['action']} {decision.get('desktop') or decision.get('host')}: {exc.message}")
            with db.session_scope() as session:
                failed(session, decision, exc.message)
        ctx.progress(n, len(decisions))
    return {"done": done, "failed": errors}
