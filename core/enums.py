"""Enumerations shared by every package. Values are stored in the database as their string value."""
from __future__ import annotations

import enum


class StrEnum(str, enum.Enum):
    def __str__(self) -> str:  # so f-strings and messages show the plain value
        return self.value


class PowerState(StrEnum):
    """A desktop's power state as libvirt reports it (the database mirrors it, libvirt decides)."""

    DOWN = "down"
    POWERING_UP = "powering_up"
    UP = "up"
    PAUSED = "paused"
    SUSPENDED = "suspended"
    POWERING_DOWN = "powering_down"
    REBOOT_IN_PROGRESS = "reboot_in_progress"
    MIGRATING = "migrating"
    NOT_RESPONDING = "not_responding"
    UNKNOWN = "unknown"


class TaskState(StrEnum):
    """What the manager is doing to a desktop right now; None when idle. Set by compare-and-swap."""

    PROVISIONING = "provisioning"
    STARTING = "starting"
    STOPPING = "stopping"
    REBOOTING = "rebooting"
    SUSPENDING = "suspending"
    RESUMING = "resuming"
    MIGRATING = "migrating"
    REIMAGING = "reimaging"
    SNAPSHOTTING = "snapshotting"
    DELETING = "deleting"


class HostStatus(StrEnum):
    UP = "up"
    DOWN = "down"
    MAINTENANCE = "maintenance"
    NON_RESPONSIVE = "non_responsive"
    INSTALLING = "installing"
    ERROR = "error"


class PoolType(StrEnum):
    AUTOMATIC = "automatic"
    MANUAL = "manual"
    TIME_BASED = "time_based"


class Protocol(StrEnum):
    SPICE = "spice"
    RDP = "rdp"
    VNC = "vnc"


class ProtocolPolicy(StrEnum):
    """How the broker picks a console protocol for a pool's desktops."""

    AUTO = "auto"
    SPICE_ONLY = "spice_only"
    RDP_ONLY = "rdp_only"
    PREFER_RDP = "prefer_rdp"


class OsType(StrEnum):
    OTHER = "other"
    OTHER_LINUX = "other_linux"
    DEBIAN_12 = "debian_12"
    RHEL_9X64 = "rhel_9x64"
    UBUNTU_24_04 = "ubuntu_24_04"
    WINDOWS_XP = "windows_xp"
    WINDOWS_7 = "windows_7"
    WINDOWS_10 = "windows_10"
    WINDOWS_11 = "windows_11"

    @property
    def is_windows(self) -> bool:
        return self.value.startswith("windows")


class Severity(StrEnum):
    NORMAL = "normal"
    WARNING = "warning"
    ERROR = "error"
    ALERT = "alert"


class JobState(StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


class PrincipalSource(StrEnum):
    LOCAL = "local"
    AD = "ad"


class EntitlementTarget(StrEnum):
    POOL = "pool"
    DESKTOP = "desktop"


class ReclaimPolicy(StrEnum):
    """What a time-based pool does with a desktop whose lease expired."""

    REIMAGE = "reimage"
    DEPROVISION = "deprovision"


class SessionState(StrEnum):
    """A console session as a user of oVirt or Horizon sees it: PENDING once a connect issued a ticket and no
    console client has attached yet; CONNECTED while a client is attached (reported by the host: libvirt's
    graphics events); DISCONNECTED when the last client left (the desktop stays the user's and the pool's
    disconnect policy may act); ENDED after a logoff."""

    PENDING = "pending"
    CONNECTED = "connected"
    DISCONNECTED = "disconnected"
    ENDED = "ended"


class DisconnectAction(StrEnum):
    """What a pool does with a desktop whose user disconnected and stayed away for its delay."""

    NONE = "none"  # nothing: the desktop waits for its user
    LOGOFF = "logoff"  # the user is logged off (an automatic pool then takes the desktop back and resets it)
    RESET = "reset"  # the user loses the desktop, which is reset to its template


class Role(StrEnum):
    SUPER_USER = "SuperUser"
    DESKTOP_ADMIN = "DesktopAdmin"
    HELP_DESK = "HelpDesk"
    USER = "User"
