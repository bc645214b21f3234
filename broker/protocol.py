"""Which console protocol a connection uses. Pure: no database, no I/O.

Rules, in order:
- the pool's protocol_policy can force one protocol (spice_only, rdp_only) or prefer RDP (prefer_rdp);
- RDP is possible only for a Windows guest that has RDP enabled (listed in its console protocols) and a
  client that speaks RDP;
- otherwise SPICE when the desktop offers it and the client supports it; RDP when the client asked for it
  or cannot do SPICE; VNC (the domain's fallback display) last.
"""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from broker.errors import NoCommonProtocol
from core.enums import OsType, Protocol, ProtocolPolicy


@dataclass(frozen=True)
class ProtocolChoice:
    protocol: Protocol
    reason: str


def parse_protocols(value: str | Iterable[str]) -> list[Protocol]:
    """'spice,rdp' or ['spice', 'RDP'] -> [Protocol.SPICE, Protocol.RDP]; unknown names are ignored."""
    items = value.split(",") if isinstance(value, str) else list(value)
    known = {p.value: p for p in Protocol}
    out: list[Protocol] = []
    for item in items:
        proto = known.get(str(item).strip().lower())
        if proto is not None and proto not in out:
            out.append(proto)
    return out


def with_browser_display(offered: Iterable[Protocol]) -> list[Protocol]:
    """What a desktop offers to the browser console (noVNC speaks VNC only): a desktop showing SPICE also has a VNC
    display (the domain's fallback, core.specs.DesktopSpec.vnc_fallback), which the browser console shows."""
    out = list(offered)
    return out + [Protocol.VNC] if Protocol.SPICE in out and Protocol.VNC not in out else out


def choose_protocol(*, os_type: OsType, desktop_protocols: Iterable[Protocol], client_protocols: Iterable[Protocol],
                    policy: ProtocolPolicy = ProtocolPolicy.AUTO, preferred: Protocol | None = None,
                    desktop_name: str = "") -> ProtocolChoice:
    """Pick the protocol for one connection. Raises NoCommonProtocol when nothing fits (saying what each side
    offers), never guesses."""
    offered = list(desktop_protocols)
    client = list(client_protocols)
    spice = Protocol.SPICE in offered and Protocol.SPICE in client
    rdp = os_type.is_windows and Protocol.RDP in offered and Protocol.RDP in client
    vnc = Protocol.VNC in offered and Protocol.VNC in client

    def fail() -> NoCommonProtocol:
        return NoCommonProtocol(desktop=desktop_name or "?", offered=",".join(p.value for p in offered) or "nothing",
                                policy=policy.value, client=",".join(p.value for p in client) or "nothing")

    if policy == ProtocolPolicy.SPICE_ONLY:
        if spice:
            return ProtocolChoice(Protocol.SPICE, "the pool allows only SPICE")
        raise fail()
    if policy == ProtocolPolicy.RDP_ONLY:
        if rdp:
            return ProtocolChoice(Protocol.RDP, "the pool allows only RDP")
        raise fail()
    if policy == ProtocolPolicy.PREFER_RDP and rdp:
        return ProtocolChoice(Protocol.RDP, "the pool prefers RDP")
    if preferred == Protocol.RDP and rdp:
        return ProtocolChoice(Protocol.RDP, "the client asked for RDP")
    if preferred == Protocol.VNC and vnc:
        return ProtocolChoice(Protocol.VNC, "the client asked for VNC")
    if spice:
        return ProtocolChoice(Protocol.SPICE, "guest and client support SPICE")
    if rdp:
        return ProtocolChoice(Protocol.RDP, "the client cannot do SPICE; the Windows guest has RDP enabled")
    if vnc:
        return ProtocolChoice(Protocol.VNC, "VNC is the only display both sides support")
    raise fail()
