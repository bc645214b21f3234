"""The provisioning side's only way to a host: NodeClient, one cached client per node agent.

Everything that talks to a node goes through the functions here, so the broker and the power and
provisioning services share one adapter (and one place to change if the client's surface changes).
Node calls never happen inside a database transaction that holds row locks.
"""
from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from core.enums import HostStatus, PowerState
from core.errors import NodeUnreachable, NotPlaced, Unavailable, VdiError
from core.specs import DesktopSpec
from manager.models import Desktop, Host

# A busy libvirtd can take tens of seconds for one call (capability probing); slow calls get more on top.
NODE_TIMEOUT_S = float(os.environ.get("VDI_NODE_TIMEOUT_SECONDS", "60"))
_clients: dict[tuple[str, str], Any] = {}
_clients_lock = threading.Lock()


@dataclass(frozen=True)
class NodeTarget:
    """How to reach the host of one desktop (read in a transaction, used after it)."""

    host_id: str
    host_name: str
    url: str
    token: str = ""
    console_address: str = ""  # what a .vv names (Host.console_address)

    def __repr__(self) -> str:  # the token is a secret
        return f"NodeTarget({self.host_name} at {self.url})"


def target_of_host(host: Host) -> NodeTarget:
    if not host.agent_url:
        raise Unavailable(what=f"host {host.name}", reason="it has no node agent URL configured")
    return NodeTarget(host.id, host.name, host.agent_url.rstrip("/"), host.agent_token,
                      host.console_address)


def target_of_desktop(session: Session, desktop: Desktop) -> NodeTarget:
    """The node of a placed desktop. Raises NotPlaced (409) if it has no host, Unavailable if the host cannot be
    used."""
    host = session.get(Host, desktop.host_id) if desktop.host_id is not None else None
    if host is None:  # never placed, or its host was removed (the reference is then cleared)
        raise NotPlaced(desktop=desktop.name, why="it was never placed, or its host was removed")
    if host.status in (HostStatus.MAINTENANCE, HostStatus.NON_RESPONSIVE, HostStatus.ERROR):
        raise NodeUnreachable(host=host.name, reason=f"the host is {host.status.value}")
    return target_of_host(host)


def client(target: NodeTarget):
    """The NodeClient for a node (cached: connections are reused across requests)."""
    from manager.nodes.client import NodeClient

    key = (target.url, target.token)
    with _clients_lock:
        found = _clients.get(key)
        if found is None:
            found = _clients[key] = NodeClient(target.url, target.token, timeout=NODE_TIMEOUT_S)
        return found


def _field(result: Any, name: str, default: Any = None) -> Any:
    if isinstance(result, dict):
        return result.get(name, default)
    return getattr(result, name, default)


def state_of(result: Any) -> PowerState:
    value = _field(result, "state", PowerState.UNKNOWN.value)
    value = getattr(value, "value", value)
    try:
        return PowerState(value)
    except ValueError:
        return PowerState.UNKNOWN


def graphics_of(result: Any) -> list[dict[str, Any]]:
    """The domain's displays as dicts: type, listen, port, tls_port."""
    out = []
    for g in _field(result, "graphics", []) or []:
        out.append({k: _field(g, k) for k in ("type", "listen", "port", "tls_port")})
    return out


def define(target: NodeTarget, spec: DesktopSpec) -> Any:
    return client(target).define(spec)


def undefine(target: NodeTarget, desktop_id: str) -> None:
    client(target).undefine(desktop_id)


def power(target: NodeTarget, desktop_id: str, action: str, *, timeout: float | None = None) -> Any:
    """start | shutdown | poweroff | reboot | suspend | resume; returns the domain info."""
    c = client(target)
    if action == "shutdown":
        return c.shutdown(desktop_id, timeout=timeout) if timeout is not None else c.shutdown(desktop_id)
    return getattr(c, action)(desktop_id)


def power_off_if_defined(target: NodeTarget, desktop_id: str) -> None:
    """Pull the plug before disk work; a domain that is already gone is fine."""
    from core.errors import DomainNotFound

    try:
        power(target, desktop_id, "poweroff")
    except DomainNotFound:
        pass


def resize(target: NodeTarget, desktop_id: str, *, vcpus: int | None = None,
           memory_mib: int | None = None) -> dict[str, str]:
    """New vCPUs/memory for the running domain where libvirt can: per field, "live" or "next_boot"."""
    return client(target).resize(desktop_id, vcpus=vcpus, memory_mib=memory_mib)


def every_target(session: Session) -> list[NodeTarget]:
    """Every host with a node agent, whatever its status."""
    return [target_of_host(h) for h in session.scalars(select(Host).where(Host.agent_url != "").order_by(Host.name))]


def disks_in_use(targets: list[NodeTarget]) -> tuple[set[str], list[str]]:
    """The disk files (real paths) of every domain defined on these hosts, ours or not, and the names of the
    hosts that did not answer (their domains' disks are unknown)."""
    paths: set[str] = set()
    silent: list[str] = []
    for target in targets:
        try:
            found = client(target).domain_disks()
        except VdiError as exc:
            silent.append(f"{target.host_name} ({exc.message})")
            continue
        paths.update(os.path.realpath(p) for files in found.values() for p in files)
    return paths, silent


def migrate(target: NodeTarget, desktop_id: str, dest_uri: str, migrate_uri: str | None) -> Any:
    """Live migration of the running domain to the libvirt at `dest_uri` (shared storage; the client's long
    migration timeout)."""
    return client(target).migrate(desktop_id, dest_uri, migrate_uri)


def domain(target: NodeTarget, desktop_id: str) -> Any:
    return client(target).get_domain(desktop_id)


def set_ticket(target: NodeTarget, desktop_id: str, password: str, valid_seconds: int) -> str:
    """Set the console password on the domain; returns passwdValidTo as the node reports it."""
    return client(target).set_ticket(desktop_id, password, valid_seconds)


def cut_consoles(target: NodeTarget, desktop_id: str) -> dict[str, int]:
    """Disconnect every console client of the domain (a revoked user's native one); its old tickets stop working."""
    return client(target).cut_consoles(desktop_id)


def install_spice_tls(target: NodeTarget, ca_cert: str, server_cert: str, server_key: str) -> Any:
    return client(target).install_spice_tls(ca_cert, server_cert, server_key)


def screenshot(target: NodeTarget, desktop_id: str, screen: int = 0) -> bytes:
    """The domain's display `screen` as PNG bytes."""
    return client(target).screenshot(desktop_id, screen)


def send_key(target: NodeTarget, desktop_id: str, keycodes: list[int]) -> None:
    """Press the keys (Linux input codes) together on the domain's keyboard."""
    client(target).send_key(desktop_id, keycodes)


def guest(target: NodeTarget, desktop_id: str, command: str, timeout: float = 5.0) -> str:
    return client(target).guest(desktop_id, command, timeout=timeout)
