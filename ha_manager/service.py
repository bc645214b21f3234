"""ha_manager's public module: the manager's side of high availability as the rest of the project sees it.

- `start_manager_ha(settings)` (the manager's lifespan) starts this instance's leader election; `singleton_loop(...)`
  runs a background loop on the leader only, each tick fenced by the leader's epoch (ha_manager/leader.py);
  `stop_manager_ha()` stops the loops and hands the lease back.
- `is_leader()`, `leader_epoch()`, `leader_term()`: for code that acts only on the leader (host liveness and fencing
  start with a quiet period after a takeover: `leader_term().led_for()`).
- `ha_status(session)`: what GET /api/v1/ha answers. Other parts of ha_manager add their own part of the report
  with `@status_section("name")` (host liveness and fence state: "hosts").
"""
from __future__ import annotations

import datetime as dt
import logging
import threading
from collections.abc import Callable
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from ha_manager.leader import LeaderElector, NotLeader, SingletonLoop, Term, db_now, fence_epoch, fenced
from manager.models import ManagerInstance, ManagerLeader

__all__ = ["NotLeader", "Term", "fence_epoch", "fenced", "ha_status", "is_leader", "known_leader_epoch",
           "leader_epoch", "leader_term", "singleton_loop", "start_manager_ha", "status_section", "stop_loop",
           "stop_manager_ha", "switch_host_power"]

log = logging.getLogger(__name__)
_lock = threading.Lock()
_elector: LeaderElector | None = None
_loops: list[SingletonLoop] = []
_users = 0  # one election per process, however many apps it serves (tests may run two at once)


def start_manager_ha(settings) -> LeaderElector:
    """Start this process's leader election (the manager's lifespan). Its first pass runs before this returns, so
    an instance alone on its database (the embedded set-up) leads from the start."""
    global _elector, _users
    with _lock:
        _users += 1
        if _elector is not None:
            return _elector
        elector = _elector = LeaderElector(settings.effective_instance_id, settings.effective_public_url,
                                           ttl_s=settings.ha_lease_ttl_seconds,
                                           renew_s=settings.ha_lease_renew_seconds)
    try:
        log.info("manager %s: %s", elector.instance_id, elector.tick())
    except Exception:  # the thread keeps trying (and logs); the API serves meanwhile
        pass
    elector.start()
    return elector


def stop_manager_ha() -> None:
    """Stop every singleton loop, then the election; a leader releases its lease so a standby takes over at once."""
    global _elector, _users
    with _lock:
        _users = max(0, _users - 1)
        if _users:
            return
        elector, loops = _elector, list(_loops)
        _elector = None
        _loops.clear()
    for loop in loops:
        loop.stop()
    if elector is not None:
        elector.stop(release=True)


def singleton_loop(name: str, period: float, tick: Callable[[], Any], *, quiet_s: float = 0.0) -> SingletonLoop:
    """Start a loop calling `tick()` every `period` s on the leader only, `quiet_s` after each takeover, every write
    it makes fenced by the leader's epoch. Stopped by `stop_loop(loop)` or with the manager (stop_manager_ha)."""
    with _lock:
        if _elector is None:
            raise RuntimeError("start_manager_ha() first: singleton loops run under the leader election")
        loop = SingletonLoop(_elector, name, period, tick, quiet_s=quiet_s)
        _loops.append(loop)
    loop.start()
    return loop


def stop_loop(loop: SingletonLoop) -> None:
    with _lock:
        if loop in _loops:
            _loops.remove(loop)
    loop.stop()


def switch_host_power(host_id: str, on: bool, timeout: float = 60.0) -> str:
    """Power a host on or off through its fence agents (IPMI, Redfish), confirmed by its BMC: the policy engine's
    standby and wake. Returns how; raises Unavailable naming every agent's failure."""
    from core.errors import Unavailable
    from ha_manager import failover, fencing
    from manager import db
    from manager.models import Host

    with db.session_scope() as session:
        host = session.get(Host, host_id)
        name = host.name if host is not None else host_id
        configs = failover.fence_configs(session, host_id, name)
    try:
        return fencing.switch_power(configs, on, timeout)
    except fencing.FenceError as exc:
        raise Unavailable(what=f"the power of host {name}", reason=str(exc)) from None


def leader_term() -> Term | None:
    """This process's current leadership term (epoch, since when), or None on a standby."""
    elector = _elector
    return elector.term() if elector is not None else None


def known_leader_epoch() -> int | None:
    """The highest leader epoch this process has seen (leader or standby); heartbeat replies tell it to node agents,
    which then refuse commands of older epochs."""
    elector = _elector
    return elector.known_epoch if elector is not None else None


def learn_leader_epoch(epoch: object) -> None:
    """The highest leader epoch a node agent has heard (its heartbeat says): this process remembers the highest, so a
    lost lease row is re-created above it (ha_manager.leader)."""
    elector = _elector
    if elector is not None:
        elector.learn_epoch(epoch)


def is_leader() -> bool:
    return leader_term() is not None


def leader_epoch() -> int | None:
    term = leader_term()
    return term.epoch if term is not None else None


# ---- GET /api/v1/ha --------------------------------------------------------------------------------------------
_SECTIONS: dict[str, Callable[[Session], Any]] = {}


def status_section(name: str) -> Callable[[Callable[[Session], Any]], Callable[[Session], Any]]:
    """Register `fn(session)` as the `name` entry of ha_status() (the extension point of GET /api/v1/ha)."""
    def register(fn: Callable[[Session], Any]) -> Callable[[Session], Any]:
        _SECTIONS[name] = fn
        return fn
    return register


def ha_status(session: Session) -> dict[str, Any]:
    """The leader (instance, address, epoch, lease expiry by the database's clock), this instance's view, every
    instance seen, then the registered sections (each host's liveness and fence state)."""
    now = db_now(session)
    row = session.get(ManagerLeader, "manager")
    elector = _elector
    ttl = elector.ttl_s if elector is not None else None
    leader = None
    if row is not None:
        leader = {"instance_id": row.holder, "address": row.holder_address, "epoch": row.epoch,
                  "acquired_at": row.acquired_at, "renewed_at": row.renewed_at, "expires_at": row.expires_at,
                  "expired": row.expires_at < now}
    term = elector.term() if elector is not None else None
    this = None
    if elector is not None:
        this = {"instance_id": elector.instance_id, "address": elector.address,
                "role": "leader" if term is not None else "standby",
                "epoch": term.epoch if term is not None else None,
                "led_for_seconds": round(term.led_for(), 3) if term is not None else None,
                "refused_writes": elector.refused_writes, "lease_ttl_seconds": elector.ttl_s,
                "lease_renew_seconds": elector.renew_s}
    alive_after = now - dt.timedelta(seconds=ttl or 12.0)
    instances = [{"instance_id": i.id, "address": i.address, "pid": i.pid, "started_at": i.started_at,
                  "seen_at": i.seen_at, "alive": i.seen_at >= alive_after,
                  "leader": leader is not None and not leader["expired"] and i.id == leader["instance_id"]}
                 for i in session.scalars(select(ManagerInstance).order_by(ManagerInstance.id))]
    report: dict[str, Any] = {"leader": leader, "epoch": row.epoch if row is not None else None,
                              "lease_expires_at": row.expires_at if row is not None else None, "now": now,
                              "this_instance": this, "instances": instances}
    for name, section in _SECTIONS.items():
        report[name] = section(session)
    return report
