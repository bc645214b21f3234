"""A desktop's display and keyboard on its node: what the display shows right now, as a PNG (the console's live
thumbnail), and keys pressed together on its keyboard (Send Ctrl+Alt+Del, for a guest waiting at a lock screen)."""
from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TypeVar

from sqlalchemy.orm import Session

from core.enums import PowerState
from core.errors import Conflict, DomainNotFound, HypervisorError, Invalid
from event_manager.service import emit
from manager.db import get_or_404
from manager.models import Desktop
from manager.provisioning import nodes
from manager.provisioning.nodes import NodeTarget

# States in which the domain is running on its node, so it has a display to capture and a keyboard to press.
SHOWS_A_SCREEN = frozenset({PowerState.UP, PowerState.PAUSED, PowerState.POWERING_DOWN,
                            PowerState.REBOOT_IN_PROGRESS, PowerState.MIGRATING})

# The keys one may send, by name, as Linux input key codes (linux/input-event-codes.h), which libvirt presses
# whatever the guest's keyboard layout.
KEYCODES: dict[str, int] = {
    "esc": 1, "backspace": 14, "tab": 15, "enter": 28, "ctrl": 29, "shift": 42, "alt": 56, "space": 57,
    **{f"f{n}": 58 + n for n in range(1, 11)}, "f11": 87, "f12": 88, "sysrq": 99, "home": 102, "up": 103,
    "pageup": 104, "left": 105, "right": 106, "end": 107, "down": 108, "pagedown": 109, "insert": 110,
    "delete": 111, "meta": 125,
}
MAX_KEYS = 8

T = TypeVar("T")


def _on_node(session: Session, desktop_id: str, what: str, act: Callable[[NodeTarget, Desktop], T]) -> T:
    """`act(target, desktop)` on the running desktop's node. Raises NotFound; Conflict (409) when the desktop is not
    running (`what`: what it cannot have until then); Unavailable/NodeUnreachable (503) when its host cannot be
    reached; HypervisorError (502) when the node fails or no longer has the desktop's domain. No row is locked
    while the node works."""
    desktop = get_or_404(session, Desktop, desktop_id, "desktop")
    if desktop.power_state not in SHOWS_A_SCREEN:
        raise Conflict(f"desktop {desktop.name} is {desktop.power_state.value.replace('_', ' ')}: there is no "
                       f"{what} until it runs")
    target = nodes.target_of_desktop(session, desktop)
    try:
        return act(target, desktop)
    except DomainNotFound:
        raise HypervisorError(libvirt_code="-", detail=f"host {target.host_name} has no domain for desktop "
                              f"{desktop.name}; the manager's record is behind the host") from None
    except Conflict as exc:  # the node says the domain is not running: our record is behind
        raise Conflict(f"desktop {desktop.name} is not running on host {target.host_name} (the node says: "
                       f"{exc.message})") from None


def desktop_screenshot(session: Session, desktop_id: str, screen: int = 0) -> bytes:
    """PNG bytes of the desktop's display `screen` (errors: see _on_node). Reads only."""
    return _on_node(session, desktop_id, "screen to show",
                    lambda target, desktop: nodes.screenshot(target, desktop.id, screen))


def keycodes_of(keys: Sequence[str]) -> list[int]:
    """The key codes of key names pressed together; Invalid (422) naming the unknown or repeated ones."""
    names = [str(k).strip().lower() for k in keys]
    unknown = [k for k in keys if str(k).strip().lower() not in KEYCODES]
    if unknown:
        raise Invalid(f"keys: unknown key name(s) {', '.join(map(repr, unknown))}; use: {', '.join(KEYCODES)}")
    if not 1 <= len(names) <= MAX_KEYS or len(set(names)) != len(names):
        raise Invalid(f"keys: give 1 to {MAX_KEYS} different keys to press together, got {list(keys)!r}")
    return [KEYCODES[k] for k in names]


def send_keys(session: Session, desktop_id: str, keys: Sequence[str], *, actor: str) -> list[str]:
    """Press `keys` (names of KEYCODES, e.g. ctrl alt delete) together on the running desktop's keyboard and
    record `desktop.keys_sent`. Returns the key names pressed. Errors: Invalid for bad names, then see _on_node."""
    codes = keycodes_of(keys)
    names = [str(k).strip().lower() for k in keys]

    def press(target: NodeTarget, desktop: Desktop) -> None:
        nodes.send_key(target, desktop.id, codes)
        emit(session, "desktop.keys_sent", f"{actor} sent {'+'.join(names)} to desktop {desktop.name}",
             actor=actor, desktop_id=desktop.id, host_id=desktop.host_id)

    _on_node(session, desktop_id, "keyboard to press", press)
    return names
