"""One round of the policy engine as a pure function: a snapshot of hosts, desktops and pools in, decisions out.

No database, no clock, no I/O: `decide(snapshot, config)` is what the leader's loop, `POST /api/v1/policies/run`
(dry run or not) and bench/policies.py all call, so a unit test can state a world and check every decision.

The policies, in the order a round applies them (each sees the world as the previous ones left it):

- power saving, waking side: a host in standby comes back when a pool of its cluster opens a calendar window
  within `wake_before_minutes`, when the free memory of the hosts that are up falls under `min_free_memory_percent`,
  or when off hours end;
- idle desktops: a running desktop whose user has been disconnected for the pool's `after_minutes` is suspended or
  shut down;
- load balancing: a host above `cpu_high_percent` or `memory_high_percent` sheds desktops until it is under the
  target (high minus `hysteresis_percent`), the largest contributors first, which is the fewest moves for one host;
  each goes to the host with the most headroom that stays under the target; at most `max_concurrent_migrations`
  are in flight (those already running count);
- power saving, packing side (off hours only): the up host with the fewest running desktops, all of them idle, is
  emptied onto the others (fullest first, under the load-balancing target, keeping the free memory reserve) and,
  once empty, put into standby through its power agent;
- memory density: every host that is up gets the cluster's KSM settings (when they differ from the last applied);
  a desktop disconnected for `balloon.idle_minutes` gets a balloon target (its memory less `reclaim_percent`), and
  its memory back as soon as its user reconnects.
Every decision carries a reason in words: the event the engine records says it.
"""
from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from policy_engine.config import ClusterPolicies

# decision kinds
MIGRATE, POWER_OFF, POWER_ON, SUSPEND, SHUTDOWN, BALLOON, KSM = (
    "migrate", "power_off", "power_on", "suspend", "shutdown", "balloon", "ksm")


@dataclass
class HostSnap:
    id: str
    name: str
    cluster_id: str
    status: str  # "up", "maintenance", ... ; "standby" when the policy engine powered it off
    cpus: int
    memory_mib: int
    cpu_usage: float = 0.0  # percent of the host, as last reported
    free_memory_mib: int = 0
    has_power_agent: bool = False
    migratable: bool = True  # a node agent URL and a libvirt URI: it can take a migrating desktop
    ksm_applied: dict[str, Any] | None = None  # the KSM settings last pushed to it
    powered_off_by_policy: bool = False  # in standby because of power saving (and nothing else)

    @property
    def used_memory_mib(self) -> int:
        return max(0, self.memory_mib - self.free_memory_mib)

    def cpu_percent(self) -> float:
        return self.cpu_usage

    def mem_percent(self) -> float:
        return 100.0 * self.used_memory_mib / self.memory_mib if self.memory_mib > 0 else 0.0

    def load(self) -> float:
        return max(self.cpu_percent(), self.mem_percent())


@dataclass
class DesktopSnap:
    id: str
    name: str
    host_id: str | None
    pool_id: str | None
    running: bool  # power state up
    busy: bool = False  # another action holds it (task_state set)
    cpus: int = 1
    memory_mib: int = 256
    cpu_usage: float = 0.0  # percent of its own vCPUs
    connected: bool = False  # a user's console is connected now
    disconnected_minutes: float | None = None  # since its user left (None: never had one, or connected)
    balloon_mib: int | None = None  # the balloon target the engine set (None: full memory)


@dataclass
class PoolSnap:
    id: str
    name: str
    cluster_id: str | None
    next_window_opens: dt.datetime | None = None


@dataclass
class Snapshot:
    now: dt.datetime
    hosts: list[HostSnap]
    desktops: list[DesktopSnap]
    pools: list[PoolSnap] = field(default_factory=list)
    migrations_in_flight: int = 0


@dataclass
class Decision:
    policy: str  # load_balancing | power_saving | idle_desktops | memory_density
    action: str  # migrate | power_off | power_on | suspend | shutdown | balloon | ksm
    reason: str
    desktop_id: str | None = None
    desktop: str | None = None
    host_id: str | None = None  # the host acted on (power, ksm) or the source of a migration
    host: str | None = None
    target_host_id: str | None = None
    target_host: str | None = None
    params: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in dataclasses.asdict(self).items() if v is not None and v != {}}


# ---- the model of a host's load a round works on ----------------------------------------------------------
class _World:
    """Mutable figures of one round: what each host would carry after the decisions taken so far."""

    def __init__(self, snapshot: Snapshot) -> None:
        self.hosts = {h.id: h for h in snapshot.hosts}
        self.cpu = {h.id: float(h.cpu_usage) for h in snapshot.hosts}
        self.used = {h.id: float(h.used_memory_mib) for h in snapshot.hosts}
        self.on_host: dict[str, list[DesktopSnap]] = {h.id: [] for h in snapshot.hosts}
        for d in snapshot.desktops:
            if d.running and d.host_id in self.on_host:
                self.on_host[d.host_id].append(d)
        self.moved: set[str] = set()
        self.stopping: set[str] = set()

    def cpu_of(self, d: DesktopSnap, host_id: str) -> float:
        """The desktop's share of a host's CPU in percent."""
        cpus = self.hosts[host_id].cpus or 1
        return d.cpu_usage * d.cpus / cpus

    def cpu_pct(self, host_id: str) -> float:
        return self.cpu[host_id]

    def mem_pct(self, host_id: str) -> float:
        total = self.hosts[host_id].memory_mib
        return 100.0 * self.used[host_id] / total if total > 0 else 0.0

    def move(self, d: DesktopSnap, source: str, target: str) -> None:
        self.cpu[source] -= self.cpu_of(d, source)
        self.used[source] -= d.memory_mib
        self.cpu[target] += self.cpu_of(d, target)
        self.used[target] += d.memory_mib
        self.on_host[source].remove(d)
        self.on_host[target].append(d)
        self.moved.add(d.id)

    def remove(self, d: DesktopSnap) -> None:
        if d.host_id in self.on_host and d in self.on_host[d.host_id]:
            self.cpu[d.host_id] -= self.cpu_of(d, d.host_id)
            self.used[d.host_id] -= d.memory_mib
            self.on_host[d.host_id].remove(d)
        self.stopping.add(d.id)

    def fits(self, d: DesktopSnap, target: str, cpu_limit: float, mem_limit: float) -> bool:
        return (self.cpu[target] + self.cpu_of(d, target) <= cpu_limit
                and 100.0 * (self.used[target] + d.memory_mib) / max(1, self.hosts[target].memory_mib) <= mem_limit)


def _up(world: _World, cluster_hosts: Iterable[HostSnap]) -> list[HostSnap]:
    return [h for h in cluster_hosts if h.status == "up"]


# ---- the round --------------------------------------------------------------------------------------------
def decide(snapshot: Snapshot, policies: dict[str, ClusterPolicies]) -> list[Decision]:
    """Every decision of one round, cluster by cluster (`policies` by cluster id; a cluster without an entry or
    with every policy disabled decides nothing)."""
    world = _World(snapshot)
    budget = [0]  # migrations this round may still start, per cluster (set below)
    out: list[Decision] = []
    by_cluster: dict[str, list[HostSnap]] = {}
    for h in snapshot.hosts:
        by_cluster.setdefault(h.cluster_id, []).append(h)
    for cluster_id in sorted(by_cluster):
        config = policies.get(cluster_id)
        if config is None:
            continue
        hosts = by_cluster[cluster_id]
        lb = config.load_balancing
        budget[0] = max(0, config.max_concurrent_migrations - snapshot.migrations_in_flight)
        out += _wake(snapshot, world, config, cluster_id, hosts)
        out += _idle(snapshot, world, config, hosts)
        if lb.enabled:
            out += _balance(world, config, hosts, budget)
        if config.power_saving.enabled:
            out += _pack(snapshot, world, config, hosts, budget)
        out += _density(snapshot, world, config, hosts)
    return out


# ---- power saving -----------------------------------------------------------------------------------------
def in_off_hours(config: ClusterPolicies, now: dt.datetime) -> bool:
    ps = config.power_saving
    minute = now.hour * 60 + now.minute
    start, end = ps.off_hours_start_minute, ps.off_hours_end_minute
    if start == end:
        return False
    return start <= minute < end if start < end else (minute >= start or minute < end)


def _free_percent(world: _World, hosts: list[HostSnap]) -> float:
    total = sum(h.memory_mib for h in hosts)
    used = sum(world.used[h.id] for h in hosts)
    return 100.0 * (total - used) / total if total > 0 else 0.0


def _wake(snapshot: Snapshot, world: _World, config: ClusterPolicies, cluster_id: str,
          hosts: list[HostSnap]) -> list[Decision]:
    ps = config.power_saving
    standby = sorted((h for h in hosts if h.status == "standby" and h.powered_off_by_policy), key=lambda h: h.name)
    if not ps.enabled and not standby:
        return []
    if not standby:
        return []
    reasons: list[str] = []
    soon = snapshot.now + dt.timedelta(minutes=ps.wake_before_minutes)
    for pool in snapshot.pools:
        opens = pool.next_window_opens
        if pool.cluster_id in (cluster_id, None) and opens is not None and snapshot.now <= opens <= soon:
            reasons.append(f"pool {pool.name}'s calendar window opens at {opens:%Y-%m-%d %H:%M} UTC (within "
                           f"{ps.wake_before_minutes} min)")
            break
    free = _free_percent(world, _up(world, hosts))
    if not reasons and free < ps.min_free_memory_percent:
        # one host at a time: the next round sees whether that was enough
        return [_power_on(standby[0], f"free memory of the hosts that are up is {free:.0f}%, under the reserve "
                                      f"of {ps.min_free_memory_percent}%")]
    if not reasons and (not ps.enabled or not in_off_hours(config, snapshot.now)):
        reasons.append("power saving is off" if not ps.enabled else "off hours are over")
    return [_power_on(h, reasons[0]) for h in standby] if reasons else []


def _power_on(h: HostSnap, why: str) -> Decision:
    return Decision("power_saving", POWER_ON, f"power host {h.name} on: {why}", host_id=h.id, host=h.name)


def _pack(snapshot: Snapshot, world: _World, config: ClusterPolicies, hosts: list[HostSnap],
          budget: list[int]) -> list[Decision]:
    ps = config.power_saving
    if not in_off_hours(config, snapshot.now):
        return []
    soon = snapshot.now + dt.timedelta(minutes=ps.wake_before_minutes)
    if any(p.next_window_opens is not None and snapshot.now <= p.next_window_opens <= soon
           and p.cluster_id in (hosts[0].cluster_id, None) for p in snapshot.pools):
        return []  # a window opens soon: hosts are coming back, not going
    out: list[Decision] = []
    up = [h for h in _up(world, hosts) if h.migratable]
    # a host already empty with a power agent: standby now
    for h in sorted(up, key=lambda h: h.name):
        if h.has_power_agent and not world.on_host[h.id] and len(up) - _count(out, POWER_OFF) > ps.min_hosts_up:
            out.append(Decision("power_saving", POWER_OFF, f"off hours: host {h.name} runs no desktop; put it in "
                                "standby through its power agent", host_id=h.id, host=h.name))
    if out:
        return out
    if len(up) <= ps.min_hosts_up:
        return []
    lb = config.load_balancing
    cpu_limit = lb.cpu_high_percent - lb.hysteresis_percent
    mem_limit = lb.memory_high_percent - lb.hysteresis_percent
    candidates = sorted((h for h in up if h.has_power_agent and not any(d.busy for d in world.on_host[h.id])),
                        key=lambda h: (len(world.on_host[h.id]), world.used[h.id], h.name))
    for source in candidates:
        desktops = sorted(world.on_host[source.id], key=lambda d: (-d.memory_mib, d.name))
        if any(d.cpu_usage > ps.idle_cpu_percent for d in desktops) or len(desktops) > budget[0]:
            continue
        others = [h for h in up if h.id != source.id]
        total = sum(h.memory_mib for h in others)
        free_after = total - sum(world.used[h.id] for h in others) - sum(d.memory_mib for d in desktops)
        if total <= 0 or 100.0 * free_after / total < ps.min_free_memory_percent:
            continue
        plan: list[tuple[DesktopSnap, HostSnap]] = []
        trial = {h.id: (world.cpu[h.id], world.used[h.id]) for h in others}
        for d in desktops:
            # best fit: the fullest host that stays under the load-balancing target
            fitting = [h for h in others
                       if trial[h.id][0] + world.cpu_of(d, h.id) <= cpu_limit
                       and 100.0 * (trial[h.id][1] + d.memory_mib) / max(1, h.memory_mib) <= mem_limit]
            if not fitting:
                plan = []
                break
            target = max(fitting, key=lambda h: (trial[h.id][1] / max(1, h.memory_mib), h.name))
            c, u = trial[target.id]
            trial[target.id] = (c + world.cpu_of(d, target.id), u + d.memory_mib)
            plan.append((d, target))
        if not plan:
            continue
        for d, target in plan:
            world.move(d, source.id, target.id)
            budget[0] -= 1
            out.append(Decision("power_saving", MIGRATE, f"off hours: empty host {source.name} so it can go to "
                                f"standby; desktop {d.name} is idle ({d.cpu_usage:.0f}% CPU)", desktop_id=d.id,
                                desktop=d.name, host_id=source.id, host=source.name, target_host_id=target.id,
                                target_host=target.name))
        break  # one host per round
    return out


def _count(decisions: list[Decision], action: str) -> int:
    return sum(1 for d in decisions if d.action == action)


# ---- idle desktops ----------------------------------------------------------------------------------------
def _idle(snapshot: Snapshot, world: _World, config: ClusterPolicies, hosts: list[HostSnap]) -> list[Decision]:
    idle = config.idle_desktops
    if not idle.enabled or not idle.pools:
        return []
    host_ids = {h.id for h in hosts}
    out = []
    for d in snapshot.desktops:
        rule = idle.pools.get(d.pool_id or "")
        if rule is None or not d.running or d.busy or d.connected or d.host_id not in host_ids \
                or d.disconnected_minutes is None or d.disconnected_minutes < rule.after_minutes:
            continue
        world.remove(d)
        action = SUSPEND if rule.action == "suspend" else SHUTDOWN
        out.append(Decision("idle_desktops", action, f"desktop {d.name}: its user has been disconnected for "
                            f"{d.disconnected_minutes:.0f} min (the pool's limit is {rule.after_minutes} min): "
                            f"{rule.action}", desktop_id=d.id, desktop=d.name, host_id=d.host_id))
    return out


# ---- load balancing ---------------------------------------------------------------------------------------
def _balance(world: _World, config: ClusterPolicies, hosts: list[HostSnap], budget: list[int]) -> list[Decision]:
    lb = config.load_balancing
    cpu_limit = lb.cpu_high_percent - lb.hysteresis_percent
    mem_limit = lb.memory_high_percent - lb.hysteresis_percent
    up = [h for h in _up(world, hosts) if h.migratable]
    out: list[Decision] = []
    over = [h for h in up if world.cpu_pct(h.id) > lb.cpu_high_percent or world.mem_pct(h.id) > lb.memory_high_percent]
    over.sort(key=lambda h: -max(world.cpu_pct(h.id) - lb.cpu_high_percent,
                                 world.mem_pct(h.id) - lb.memory_high_percent))
    for source in over:
        before_cpu, before_mem = world.cpu_pct(source.id), world.mem_pct(source.id)
        targets = [h for h in up if h.id != source.id
                   and world.cpu_pct(h.id) <= cpu_limit and world.mem_pct(h.id) <= mem_limit]
        # the smallest set of desktops found whose removal brings the host under its target goes first, then the
        # largest contributor to what is still over
        preferred = _smallest_shed(world, source, cpu_limit, mem_limit)
        while budget[0] > 0 and (world.cpu_pct(source.id) > cpu_limit or world.mem_pct(source.id) > mem_limit):
            cpu_over = world.cpu_pct(source.id) - cpu_limit
            mem_over = world.mem_pct(source.id) - mem_limit
            movable = [d for d in world.on_host[source.id] if not d.busy and d.id not in world.moved]
            if not movable:
                break

            def weight(d: DesktopSnap) -> float:
                c = world.cpu_of(d, source.id) / max(cpu_over, 1e-9) if cpu_over > 0 else 0.0
                m = (100.0 * d.memory_mib / max(1, source.memory_mib)) / max(mem_over, 1e-9) if mem_over > 0 else 0
                return min(c, 1.0) + min(m, 1.0)

            moved = False
            for d in sorted(movable, key=lambda d: (d.id not in preferred, -weight(d), d.name)):
                fitting = [t for t in targets if world.fits(d, t.id, cpu_limit, mem_limit)]
                if not fitting:
                    continue
                target = min(fitting, key=lambda t: (max(world.cpu_pct(t.id), world.mem_pct(t.id)), t.name))
                world.move(d, source.id, target.id)
                budget[0] -= 1
                out.append(Decision(
                    "load_balancing", MIGRATE,
                    f"host {source.name} is over its threshold (CPU {before_cpu:.0f}% > {lb.cpu_high_percent}% or "
                    f"memory {before_mem:.0f}% > {lb.memory_high_percent}%): move desktop {d.name} "
                    f"({d.cpu_usage:.0f}% of {d.cpus} vCPU, {d.memory_mib} MiB) to {target.name}, until it is under "
                    f"{cpu_limit}% CPU and {mem_limit}% memory",
                    desktop_id=d.id, desktop=d.name, host_id=source.id, host=source.name, target_host_id=target.id,
                    target_host=target.name))
                moved = True
                break
            if not moved:
                break
    return out


def _smallest_shed(world: _World, source: HostSnap, cpu_limit: float, mem_limit: float) -> set[str]:
    """The smallest of the sets that three greedy orders (by CPU, by memory, by both relative to what is over)
    take off `source` until both figures are under their targets: the largest first is the fewest for one figure;
    with two over, one order or another comes closer."""
    movable = [d for d in world.on_host[source.id] if not d.busy and d.id not in world.moved]
    cpu0, mem0 = world.cpu_pct(source.id), world.mem_pct(source.id)
    share = {d.id: (world.cpu_of(d, source.id), 100.0 * d.memory_mib / max(1, source.memory_mib)) for d in movable}
    cpu_over, mem_over = max(cpu0 - cpu_limit, 1e-9), max(mem0 - mem_limit, 1e-9)
    orders = (lambda d: -share[d.id][0], lambda d: -share[d.id][1],
              lambda d: -(min(share[d.id][0] / cpu_over, 1.0) + min(share[d.id][1] / mem_over, 1.0)))
    # first, the order the shedding loop itself follows: the largest share of what is STILL over, recomputed
    cpu, mem, dynamic, left = cpu0, mem0, set(), list(movable)
    while left and (cpu > cpu_limit or mem > mem_limit):
        co, mo = max(cpu - cpu_limit, 1e-9), max(mem - mem_limit, 1e-9)
        d = max(left, key=lambda d: (min(share[d.id][0] / co, 1.0) * (cpu > cpu_limit)
                                     + min(share[d.id][1] / mo, 1.0) * (mem > mem_limit), d.name))
        left.remove(d)
        dynamic.add(d.id)
        cpu, mem = cpu - share[d.id][0], mem - share[d.id][1]
    best: set[str] | None = dynamic if cpu <= cpu_limit and mem <= mem_limit else None
    for order in orders:
        cpu, mem, chosen = cpu0, mem0, set()
        for d in sorted(movable, key=lambda d: (order(d), d.name)):
            if cpu <= cpu_limit and mem <= mem_limit:
                break
            dc, dm = share[d.id]
            if (cpu <= cpu_limit or dc <= 0) and (mem <= mem_limit or dm <= 0):
                continue  # it helps no figure that is still over
            chosen.add(d.id)
            cpu, mem = cpu - dc, mem - dm
        if cpu <= cpu_limit and mem <= mem_limit and (best is None or len(chosen) < len(best)):
            best = chosen
    return best or set()


def fewest_migrations(world_hosts: list[HostSnap], desktops: list[DesktopSnap], config: ClusterPolicies) -> int:
    """A lower bound of the migrations that bring every host under the load-balancing target: per host over its
    threshold, the fewest desktops whose removal brings each figure under the target (the largest first is
    optimal for one figure), the larger of the two; summed over hosts. Targets' capacity is ignored."""
    lb = config.load_balancing
    world = _World(Snapshot(dt.datetime.now(dt.timezone.utc), world_hosts, desktops))
    cpu_limit = lb.cpu_high_percent - lb.hysteresis_percent
    mem_limit = lb.memory_high_percent - lb.hysteresis_percent
    total = 0
    for h in world_hosts:
        if h.status != "up" or not (world.cpu_pct(h.id) > lb.cpu_high_percent
                                    or world.mem_pct(h.id) > lb.memory_high_percent):
            continue
        need = 0
        for figure, limit in ((lambda d: world.cpu_of(d, h.id), world.cpu_pct(h.id) - cpu_limit),
                              (lambda d: 100.0 * d.memory_mib / max(1, h.memory_mib), world.mem_pct(h.id) - mem_limit)):
            shed, count = 0.0, 0
            for value in sorted((figure(d) for d in world.on_host[h.id]), reverse=True):
                if shed >= limit:
                    break
                shed += value
                count += 1
            need = max(need, count if limit > 0 else 0)
        total += need
    return total


# ---- memory density ---------------------------------------------------------------------------------------
def _density(snapshot: Snapshot, world: _World, config: ClusterPolicies, hosts: list[HostSnap]) -> list[Decision]:
    md = config.memory_density
    out: list[Decision] = []
    wanted = md.ksm_settings()
    for h in sorted(_up(world, hosts), key=lambda h: h.name):
        if md.ksm_enabled is None:
            break
        if h.ksm_applied != wanted:
            out.append(Decision("memory_density", KSM, f"host {h.name}: apply the cluster's KSM settings "
                                f"({', '.join(f'{k}={v}' for k, v in wanted.items())})", host_id=h.id, host=h.name,
                                params=dict(wanted)))
    host_ids = {h.id for h in hosts if h.status == "up"}
    for d in snapshot.desktops:
        if not d.running or d.busy or d.host_id not in host_ids or d.id in world.moved or d.id in world.stopping:
            continue
        idle = md.balloon_enabled and not d.connected and d.disconnected_minutes is not None \
            and d.disconnected_minutes >= md.balloon_idle_minutes
        if idle:
            target = max(md.balloon_min_mib, d.memory_mib * (100 - md.balloon_reclaim_percent) // 100)
            if target < d.memory_mib and d.balloon_mib != target:
                out.append(Decision("memory_density", BALLOON, f"desktop {d.name}: its user has been disconnected "
                                    f"for {d.disconnected_minutes:.0f} min: lower its memory from {d.memory_mib} to "
                                    f"{target} MiB (balloon)", desktop_id=d.id, desktop=d.name, host_id=d.host_id,
                                    params={"memory_mib": target}))
        elif d.balloon_mib is not None and d.balloon_mib < d.memory_mib:
            why = "its user is back" if d.connected else "memory reclaim is off"
            out.append(Decision("memory_density", BALLOON, f"desktop {d.name}: {why}: give its memory back "
                                f"({d.balloon_mib} to {d.memory_mib} MiB)", desktop_id=d.id, desktop=d.name,
                                host_id=d.host_id, params={"memory_mib": d.memory_mib}))
    return out
