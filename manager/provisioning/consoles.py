"""Issuing console access for one desktop: a fresh ticket set on the domain through its node, and the
descriptor (host, port, password, expiry) that broker.console renders as a .vv or .rdp file. NODES is what the
broker's service (broker.service.DesktopNodes) is handed to start desktops and issue consoles."""
from __future__ import annotations

import datetime as dt
import os
from typing import Any
from urllib.parse import urlparse

from sqlalchemy.orm import Session

from broker.console import ConsoleDescriptor, new_ticket_password
from core.enums import Protocol
from core.errors import Conflict, Unavailable
from manager import console_tls
from manager.config import get_settings
from manager.models import utcnow
from manager.provisioning import nodes, power
from manager.provisioning.nodes import NodeTarget

# How long a connect waits for its desktop to boot.
CONNECT_START_TIMEOUT_S = float(os.environ.get("VDI_CONNECT_START_SECONDS", "120"))

_WILDCARDS = {"", "0.0.0.0", "::", "[::]", None}


def _parse_valid_to(value: str | None, fallback: dt.datetime) -> dt.datetime:
    if not value:
        return fallback
    try:
        parsed = dt.datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        return fallback
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.timezone.utc)


def issue(target: NodeTarget | None, *, desktop_id: str, desktop_name: str, protocol: Protocol, valid_seconds: int,
          guest_ip: str = "", username: str = "", fullscreen: bool = False) -> ConsoleDescriptor:
    """A console descriptor for `protocol`. SPICE/VNC: a new random ticket valid `valid_seconds`, set on the
    running domain (its passwdValidTo), and the display's address. RDP: the guest's address (Windows logs the
    user in; no ticket). Raises Conflict when the domain shows no display of that kind (not running), Unavailable
    when an RDP guest has not reported its address yet."""
    if protocol == Protocol.RDP:
        if not guest_ip:
            raise Unavailable(what=f"RDP to desktop {desktop_name}",
                              reason="the guest has not reported its IP address yet; try again in a minute")
        return ConsoleDescriptor(Protocol.RDP, guest_ip, 3389, desktop_id, desktop_name, username=username,
                                 fullscreen=fullscreen)
    if target is None:
        raise Unavailable(what=f"the console of desktop {desktop_name}", reason="it is not placed on a host")
    password = new_ticket_password()
    valid_to = nodes.set_ticket(target, desktop_id, password, valid_seconds)
    info = nodes.domain(target, desktop_id)
    display = next((g for g in nodes.graphics_of(info) if g.get("type") == protocol.value), None)
    if display is None or not display.get("port") or int(display["port"]) <= 0:
        raise Conflict(f"desktop {desktop_name} shows no {protocol.value} display (is it running?); start it "
                       "and connect again")
    listen = display.get("listen")
    host = listen if listen not in _WILDCARDS else (target.console_address or urlparse(target.url).hostname
                                                    or "127.0.0.1")
    expires = _parse_valid_to(valid_to, utcnow() + dt.timedelta(seconds=valid_seconds))
    settings = get_settings()
    tls_port = display.get("tls_port") or None
    ca, subject = "", ""
    if tls_port and settings.spice_tls:  # the host's libvirt has spice_tls on, and our CA signed its certificate
        ca, subject = console_tls.ca_certificate(), console_tls.host_subject(target.host_name)
    return ConsoleDescriptor(protocol, host, int(display["port"]), desktop_id, desktop_name, password=password,
                             expires_at=expires, tls_port=tls_port, username=username, fullscreen=fullscreen,
                             proxy=settings.spice_proxy if protocol == Protocol.SPICE else "", ca=ca,
                             host_subject=subject)


def issue_for_desktop(session: Session, desktop: Any, protocol: Protocol, *, username: str,
                      fullscreen: bool = False) -> ConsoleDescriptor:
    """Read where the desktop (a Desktop or a broker DESKTOP_BRIEF row) runs, then (outside any lock) set a ticket
    on it through its node."""
    # RDP goes to the guest itself: no node call, so no need to look the host up.
    target = None if protocol == Protocol.RDP else nodes.target_of_desktop(session, desktop)
    return issue(target, desktop_id=desktop.id, desktop_name=desktop.name, protocol=protocol,
                 valid_seconds=get_settings().ticket_seconds, guest_ip=desktop.ip, username=username,
                 fullscreen=fullscreen)


class _BrokerNodes:
    """broker.service.DesktopNodes, done by provisioning: a connect's start waits CONNECT_START_TIMEOUT_S."""

    def ensure_running(self, desktop_id: str, *, actor: str) -> None:
        power.ensure_running(desktop_id, actor=actor, timeout=CONNECT_START_TIMEOUT_S)

    issue_console = staticmethod(issue_for_desktop)


NODES = _BrokerNodes()
