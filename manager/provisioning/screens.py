"""What a desktop's display shows right now, as a PNG from its node (the console's live thumbnail)."""
from __future__ import annotations

from sqlalchemy.orm import Session

from core.enums import PowerState
from core.errors import Conflict, DomainNotFound, HypervisorError
from manager.db import get_or_404
from manager.models import Desktop
from manager.provisioning import nodes

# States in which the domain is running on its node, so it has a display to capture.
SHOWS_A_SCREEN = frozenset({PowerState.UP, PowerState.PAUSED, PowerState.POWERING_DOWN,
                            PowerState.REBOOT_IN_PROGRESS, PowerState.MIGRATING})


def desktop_screenshot(session: Session, desktop_id: str, screen: int = 0) -> bytes:
    """PNG bytes of the desktop's display `screen`. Raises NotFound; Conflict (409) when the desktop is not
    running; Unavailable/NodeUnreachable (503) when its host cannot be reached; HypervisorError (502) when the
    node fails or no longer has the desktop's domain. Reads only: no row is locked while the node works."""
    desktop = get_or_404(session, Desktop, desktop_id, "desktop")
    if desktop.power_state not in SHOWS_A_SCREEN:
        raise Conflict(f"desktop {desktop.name} is {desktop.power_state.value.replace('_', ' ')}: there is no "
                       "screen to show until it runs")
    target = nodes.target_of_desktop(session, desktop)
    try:
        return nodes.screenshot(target, desktop.id, screen)
    except DomainNotFound:
        raise HypervisorError(libvirt_code="-", detail=f"host {target.host_name} has no domain for desktop "
                              f"{desktop.name}; the manager's record is behind the host") from None
    except Conflict as exc:  # the node says the domain is not running: our record is behind
        raise Conflict(f"desktop {desktop.name} is not running on host {target.host_name} (the node says: "
                       f"{exc.message})") from None
