"""Which host a new desktop goes to. Pure policy functions over host figures (no database, no I/O).

A policy receives the candidate hosts (up, in the right cluster, with a node agent) and the memory the
desktop needs, and returns the chosen host or None. `spread` balances load (most free memory first),
`pack` saves power (fill the fullest host that still fits, so idle hosts can be switched off).
Register another with `register_policy(name, fn)`.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from core.errors import Invalid


@dataclass
class HostLoad:
    host_id: str
    name: str
    free_memory_mib: int  # as last reported, minus what this batch already placed there
    desktops: int = 0


PlacementPolicy = Callable[[Sequence[HostLoad], int], HostLoad | None]


def _fits(hosts: Sequence[HostLoad], memory_mib: int) -> list[HostLoad]:
    return [h for h in hosts if h.free_memory_mib >= memory_mib]


def spread(hosts: Sequence[HostLoad], memory_mib: int) -> HostLoad | None:
    """Load balancing: the host with the most free memory (fewest desktops, then name, on a tie)."""
    fitting = _fits(hosts, memory_mib)
    return min(fitting, key=lambda h: (-h.free_memory_mib, h.desktops, h.name)) if fitting else None


def pack(hosts: Sequence[HostLoad], memory_mib: int) -> HostLoad | None:
    """Power saving: the host with the least free memory that still fits the desktop."""
    fitting = _fits(hosts, memory_mib)
    return min(fitting, key=lambda h: (h.free_memory_mib, -h.desktops, h.name)) if fitting else None


POLICIES: dict[str, PlacementPolicy] = {"spread": spread, "pack": pack}


def register_policy(name: str, policy: PlacementPolicy) -> None:
    POLICIES[name] = policy


def get_policy(name: str) -> PlacementPolicy:
    try:
        return POLICIES[name]
    except KeyError:
        raise Invalid(f"placement policy {name!r} is unknown; use one of {', '.join(sorted(POLICIES))}") from None


def place_many(hosts: Sequence[HostLoad], memory_mib: int, count: int, policy: PlacementPolicy) \
        -> list[HostLoad | None]:
    """Place `count` desktops one after the other, each placement reducing its host's free memory."""
    out: list[HostLoad | None] = []
    for _ in range(count):
        host = policy(hosts, memory_mib)
        if host is not None:
            host.free_memory_mib -= memory_mib
            host.desktops += 1
        out.append(host)
    return out
