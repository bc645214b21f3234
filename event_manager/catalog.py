"""The event catalog: every event code the manager records, declared once.

Each `EventType` says what the code means (`text`, with the objects it names in braces), its default severity, the
objects an event of that code refers to (`objects`: the event's `<kind>_id` columns), how often one object may
record it (`suppress_s`: flood suppression per code and first object) and which alert it opens or clears
(event_manager/alerts.py). `service.emit` refuses a code that is not declared here (UndeclaredEvent), and
docs/events.md is generated from this list (`scripts/event_reference.py --write`).
"""
from __future__ import annotations

from dataclasses import dataclass

from core.enums import Severity

OBJECT_KINDS = ("user", "desktop", "host", "pool", "template", "job")


class UndeclaredEvent(LookupError):
    """A programming error: an event code missing from the catalog (add it to event_manager/catalog.py)."""


@dataclass(frozen=True)
class EventType:
    code: str
    severity: Severity
    objects: tuple[str, ...]
    text: str
    suppress_s: float = 0.0  # at most one event of this code per first object in this many seconds
    opens: str = ""  # the alert kind an event of this code opens (or refreshes) on its first object
    clears: tuple[str, ...] = ()  # the alert kinds it resolves on its first object

    @property
    def group(self) -> str:
        return self.code.split(".", 1)[0]


CATALOG: dict[str, EventType] = {}


def declare(code: str, severity: Severity, objects: tuple[str, ...] | str, text: str, *, suppress_s: float = 0.0,
            opens: str = "", clears: tuple[str, ...] = ()) -> EventType:
    objects = (objects,) if isinstance(objects, str) else objects
    if code in CATALOG:
        raise ValueError(f"event code {code} is declared twice")
    if any(kind not in OBJECT_KINDS for kind in objects):
        raise ValueError(f"event code {code}: objects must be among {OBJECT_KINDS}")
    if (suppress_s or opens or clears) and not objects:
        raise ValueError(f"event code {code}: suppression and alerts need an object")
    CATALOG[code] = EventType(code, severity, objects, text, suppress_s, opens, clears)
    return CATALOG[code]


def event_type(code: str) -> EventType:
    try:
        return CATALOG[code]
    except KeyError:
        raise UndeclaredEvent(f"event code {code!r} is not declared in event_manager/catalog.py") from None


N, W, E, A = Severity.NORMAL, Severity.WARNING, Severity.ERROR, Severity.ALERT
HALF_HOUR = 1800.0

# ---- alerts (event_manager/alerts.py) ----------------------------------------------------------------------------
declare("alert.opened", A, (), "alert {kind} opened on {object}: {message}")
declare("alert.acknowledged", N, (), "{actor} acknowledged alert {kind} on {object}")
declare("alert.resolved", N, (), "alert {kind} on {object} resolved by {actor} (the condition went away, or by hand)")

# ---- objects created, changed, deleted through the API (manager/api/crud.py: one code per resource and verb) ----
for _kind in ("cluster", "host", "storage_domain", "template", "desktop", "pool", "user", "group", "entitlement",
              "role_assignment", "tag", "bookmark"):
    _objects = {"host": ("host",), "template": ("template",), "desktop": ("desktop",), "pool": ("pool",),
                "user": ("user",), "role_assignment": ("user",), "entitlement": ("pool", "desktop", "user")}
    for _verb in ("created", "updated", "deleted"):
        declare(f"{_kind}.{_verb}", N, _objects.get(_kind, ()), f"{{actor}} {_verb} {_kind.replace('_', ' ')} "
                "{name}" + (" (a permission change)" if _kind == "role_assignment" else ""))

# ---- users and sign-in ----------------------------------------------------------------------------------------
declare("user.login", N, "user", "{user} logged in from {address}")
declare("user.logout", N, "user", "{user} logged out")
declare("user.login_failed", W, "user", "a login as {login} from {address} failed: wrong user name or password "
        "(the user is set when the name is a local account; never the password)")
declare("user.login_refused", W, "user", "a login as {login} from {address} was refused after a right password: "
        "{reason} (account disabled, expired or locked)")
declare("user.token_created", N, "user", "{actor} created API token {name} for {user}, valid until {expiry} "
        "(never the secret)")
declare("user.access_revoked", N, "user", "{user} was disabled or removed: tokens revoked and sessions ended")
declare("session.ended", N, ("desktop", "user", "pool"), "the session of {user} on {desktop} ended: {reason}")
declare("session.connected", N, ("desktop", "user", "host"), "{user}'s console client attached to {desktop}")
declare("session.disconnected", N, ("desktop", "user", "host"), "{user}'s console client left {desktop}")
declare("identity.no_superuser", A, (), "after a directory sync no enabled account holds the SuperUser role")
declare("directory.synced", N, (), "a full or incremental sync of directory {name}: what was added, changed, disabled")
declare("directory.permissions_changed", N, (), "the directory's group to role and entitlement maps were applied")

# ---- broker and consoles ---------------------------------------------------------------------------------------
declare("broker.assigned", N, ("desktop", "user", "pool"), "desktop {desktop} of pool {pool} assigned to {user}")
declare("broker.connected", N, ("desktop", "user", "pool"), "{user} connected to {desktop} over {protocol}")
declare("broker.disconnected", N, ("desktop", "user", "pool"), "{user} disconnected from {desktop}")
declare("broker.disconnect_reset", N, ("desktop", "user", "pool"), "{user} stayed away from {desktop}; the pool's "
        "disconnect policy ended the session")
declare("broker.logoff", N, ("desktop", "user", "pool"), "{actor} logged off {desktop}")
declare("broker.reset_by_user", N, ("desktop", "user", "pool"), "{user} gave {desktop} back to {pool} to be reset")
declare("broker.unassigned", N, ("desktop", "user", "pool"), "{actor} took {desktop} from {user}")
declare("broker.access_revoked", W, ("desktop", "user", "pool"), "{user} lost {desktop}: their access was revoked "
        "(account disabled or removed, or entitlement gone); it is reclaimed by its pool's policy")
declare("console.ticket", N, ("desktop", "user", "pool"), "a console ticket for {desktop} issued to {user}")
declare("console.admin_access", N, ("desktop", "user", "pool"), "{actor} opened the console of {desktop} (a warning "
        "when its user is on it)")
declare("console.browser_open", N, ("desktop", "user", "pool"), "{user} opened the browser console of {desktop}")
declare("console.browser_close", N, ("desktop", "user", "pool"), "the browser console of {desktop} closed: {reason}")
declare("console.browser_refused", W, ("desktop", "user"), "a browser console of {desktop} was refused: {reason}")
declare("console.browser_disconnect", N, ("desktop", "pool"), "{actor} disconnected the browser consoles of "
        "{desktop}")

# ---- desktops ----------------------------------------------------------------------------------------------------
_DESKTOP_START = "desktop.start_failed"
declare("desktop.provisioned", N, ("desktop", "host"), "{actor} created {desktop} on {host}")
declare("desktop.deprovisioned", N, ("desktop", "pool", "job"), "{desktop} was removed (domain and disk)")
declare("desktop.reset", N, ("desktop", "pool", "job"), "{desktop} was reset to its template")
declare("desktop.user_attached", N, ("desktop", "user"), "{actor} attached {desktop} to {user}")
declare("desktop.user_detached", N, ("desktop", "user"), "{actor} detached {user} from {desktop}")
declare("desktop.state_changed", N, ("desktop", "host"), "{desktop} is {state} on {host} (was {old_state})")
declare("desktop.lease_expired", W, ("desktop", "user", "pool"), "the lease of {user} on {desktop} expired")
declare("desktop.lease_extended", N, ("desktop", "user", "pool"), "{actor} extended the lease on {desktop}")
declare("desktop.keys_sent", N, ("desktop", "host"), "{actor} pressed {keys} on the keyboard of {desktop}")
declare("desktop.redefined", W, ("desktop", "host"), "{desktop} was missing on {host} and was defined again")
declare("desktop.redefine_failed", E, ("host", "desktop"), "a desktop missing on {host} could not be defined again")
# Power actions (manager/provisioning/power.py, PowerAction and PAST).
declare("desktop.started", N, ("desktop", "host"), "{actor} started {desktop} on {host}", clears=(_DESKTOP_START,))
declare("desktop.shut_down", N, ("desktop", "host"), "{actor} shut {desktop} down on {host}")
declare("desktop.powered_off", N, ("desktop", "host"), "{actor} powered {desktop} off on {host}")
declare("desktop.rebooted", N, ("desktop", "host"), "{actor} rebooted {desktop} on {host}", clears=(_DESKTOP_START,))
declare("desktop.start_failed", E, ("desktop", "host"), "starting {desktop} failed: {reason}", opens=_DESKTOP_START)
declare("desktop.stop_failed", E, ("desktop", "host"), "shutting {desktop} down failed: {reason}")
declare("desktop.poweroff_failed", E, ("desktop", "host"), "powering {desktop} off failed: {reason}")
declare("desktop.reboot_failed", E, ("desktop", "host"), "rebooting {desktop} failed: {reason}", opens=_DESKTOP_START)
declare("desktop.suspended", N, ("desktop", "host"), "{actor} suspended {desktop} on {host}")
declare("desktop.resumed", N, ("desktop", "host"), "{actor} resumed {desktop} on {host}")
declare("desktop.suspend_failed", E, ("desktop", "host"), "suspending {desktop} failed: {reason}")
declare("desktop.resume_failed", E, ("desktop", "host"), "resuming {desktop} failed: {reason}")
declare("desktop.migrated", N, ("desktop", "host", "job"), "{desktop} moved live to {host}")
declare("desktop.migrate_failed", E, ("desktop", "host", "job"), "migrating {desktop} failed: {reason}")
# High availability restarts (ha_manager/restart.py).
declare("desktop.ha_restarted", N, ("desktop", "host"), "{desktop} was restarted on {host} after its host failed",
        clears=(_DESKTOP_START,))
declare("desktop.ha_restart_failed", E, ("desktop", "host"), "restarting {desktop} elsewhere failed: {reason}",
        opens=_DESKTOP_START)
declare("desktop.ha_waiting", A, ("desktop", "host"), "{desktop} waits for a host able to run it")
# Disks: snapshots, previews, re-image (image_manager/tasks.py DESKTOP_DISK_KINDS: desktop.<kind> and its _failed).
declare("desktop.snapshot_created", N, ("desktop", "job"), "{actor} took snapshot {name} of {desktop}")
declare("desktop.snapshot_failed", W, ("desktop", "job"), "a snapshot of {desktop} failed: {reason}")
for _what, _text in (("revert", "reverted {desktop} to a snapshot"), ("preview", "previews a snapshot of {desktop}"),
                     ("undo_preview", "undid the snapshot preview of {desktop}"),
                     ("commit_preview", "kept the snapshot preview of {desktop}"),
                     ("delete_snapshot", "deleted a snapshot of {desktop}"),
                     ("reimage", "re-imaged {desktop}")):
    declare(f"desktop.{_what}", N, ("desktop", "job"), "{actor} " + _text)
    declare(f"desktop.{_what}_failed", E, ("desktop", "job"), f"{_what.replace('_', ' ')} of {{desktop}} failed: "
            "{reason}")
declare("desktop.reimaged", N, ("desktop", "template", "job"), "{actor} re-imaged {desktop} from a template version")
declare("desktops.bulk_done", N, "job", "{actor}'s bulk action on desktops: how many done, how many failed")

# ---- pools and templates ----------------------------------------------------------------------------------------
declare("pool.resized", N, "pool", "{actor} resized {pool}")
declare("pool.provisioned", N, ("pool", "job"), "{pool}: desktops created (and failed)")
declare("pool.template_rollout", N, ("pool", "template"), "{actor} moved {pool} to a new template version")
declare("pool.opened", N, "pool", "{pool} opened on its recurring schedule")
declare("pool.closed", N, "pool", "{pool} closed on its recurring schedule: running leases end, desktops reclaimed")
declare("template.import_started", N, ("template", "job"), "{actor} started importing an image into {template}")
declare("template.version_started", N, ("template", "desktop", "job"), "{actor} started a version of {template} "
        "from {desktop}")
declare("template.version_ready", N, ("template", "job"), "a version of {template} is ready")
declare("template.version_failed", W, ("template", "job"), "building a version of {template} failed: {reason}")
declare("template.version_deleted", N, "template", "{actor} deleted a version of {template}")

# ---- images -------------------------------------------------------------------------------------------------------
declare("image.exported", N, ("desktop", "job"), "{actor} exported a disk to {path}")
declare("image.export_failed", W, ("desktop", "job"), "an export to {path} failed: {reason}")
declare("image.check_failed", E, ("desktop", "job"), "qemu-img check of {path} found errors")
declare("image.check_leaks", W, ("desktop", "job"), "qemu-img check of {path} found leaked clusters")
declare("image.reconciled", N, "job", "image reconcile after a start: jobs resumed and undone, files and rows removed")
declare("image.reconcile.missing", E, "desktop", "image file {path} is missing; its volume is marked illegal")
for _what in ("resumed", "undone", "row_removed", "released", "file_removed", "kept"):
    declare(f"image.reconcile.{_what}", W, ("desktop", "template", "job"), f"image reconcile: {_what.replace('_', ' ')}"
            " ({what})")

# ---- hosts and high availability ---------------------------------------------------------------------------------
_HOST_DOWN = "host.unavailable"
declare("host.up", N, "host", "{host} is up (heartbeat received)", clears=(_HOST_DOWN,))
declare("host.recovered", N, "host", "{host} sends heartbeats again", clears=(_HOST_DOWN,))
declare("host.activated", N, "host", "{actor} activated {host}")
declare("host.maintenance", N, "host", "{actor} put {host} into maintenance")
declare("host.suspected", W, "host", "{host} is connecting: its heartbeats stopped")
declare("host.non_responsive", A, "host", "{host} failed: no heartbeats and its agent does not answer",
        opens=_HOST_DOWN)
declare("host.fence_started", W, "host", "fencing {host} through its fence agents")
declare("host.fenced", W, "host", "{host} is fenced; its HA desktops restart elsewhere", opens=_HOST_DOWN)
declare("host.fence_failed", A, "host", "{host} could not be fenced: {reason}", opens=_HOST_DOWN)
declare("host.fence_agents_set", N, "host", "{actor} set the fence agents of {host}")
declare("host.fence_skipped", W, "host", "{host} is not fenced: it still renews its storage lease; it is asked to "
        "release its guests, and its desktops restart elsewhere once it has or its lease has expired")
declare("host.guests_released", A, "host", "{host} released its guests on request (its storage lease says none runs "
        "there); its HA desktops restart elsewhere", opens=_HOST_DOWN)
declare("host.lease_wait", W, "host", "{host} cannot be fenced: its desktops restart elsewhere when its storage lease "
        "has expired")
declare("host.lease_expired", A, "host", "{host} could not be fenced and its storage lease expired: its guests are off "
        "(self-fenced); its HA desktops restart elsewhere", opens=_HOST_DOWN)
declare("host.self_fenced", A, "host", "{host} powered its own guests off: it had lost both its storage lease and "
        "the managers, or the managers and a manager had asked it to release them")
declare("ha.fencing_skipped", A, (), "no host is fenced: too many are unreachable at once (the network)")
declare("host.foreign_desktop", W, ("desktop", "host"), "{host} holds or reports {desktop}, which the database "
        "places on another host", suppress_s=HALF_HOUR)
declare("host.unknown_domain", W, "host", "{host} runs a domain of this manager unknown to the database")
declare("host.high_cpu", W, "host", "{host} CPU usage is {percent}% (at least 95%)", suppress_s=HALF_HOUR)
declare("host.spice_tls_failed", W, "host", "{host} did not take its SPICE TLS certificate", suppress_s=HALF_HOUR)

# ---- jobs and the rest -------------------------------------------------------------------------------------------
declare("job.succeeded", N, "job", "job {kind} succeeded (it resolves the job.failed alerts of earlier jobs of its "
        "kind on its target)", clears=("job.failed",))
declare("job.failed", E, "job", "job {kind} failed: {error}", opens="job.failed")
declare("job.cancelled", W, "job", "job {kind} was cancelled")
declare("job.resumed", W, "job", "job {kind} was interrupted (its runner stopped) and is resumed with the same id")
declare("tag.attached", N, ("desktop", "host", "pool", "template", "user"), "{actor} tagged objects with {tag}")
declare("tag.detached", N, ("desktop", "host", "pool", "template", "user"), "{actor} removed {tag} from objects")
declare("demo.seeded", N, (), "the demo data was created")

# ---- the policy engine (policy_engine/, docs/policies.md) ---------------------------------------------------------
declare("policy.configured", N, (), "{actor} set the policies of a cluster")
declare("policy.decision", N, ("desktop", "host", "job"), "{policy}: a decision of the policy engine and its reason "
        "(a migration, a suspend or shutdown, a host to standby or back, KSM settings, a balloon target)")
declare("policy.failed", W, ("desktop", "host"), "{policy}: a decision could not be carried out: {reason}")
declare("policy.host_standby", N, "host", "{host} was emptied and powered off through its power agent (standby)")
declare("policy.host_waking", N, "host", "{host} was powered on through its power agent")
declare("policy.host_back", N, "host", "{host} is back from standby (heartbeats again) and in service")
