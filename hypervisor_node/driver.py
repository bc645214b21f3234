"""The node driver: everything the agent does to the hypervisor, behind one Protocol.

`LibvirtDriver` is the only implementation and the only code in the project that calls libvirt.
Every libvirt call runs through `LibvirtDriver._run`, the single seam where `libvirtError` becomes a
core.errors class: VIR_ERR_NO_DOMAIN -> DomainNotFound, anything else -> HypervisorError. No libvirt
exception leaves this module.

Ownership: a domain is ours when its <metadata> carries our stamp (hypervisor_node.domxml.model.Owner)
with this driver's manager id. Foreign domains are invisible: listing skips them and every per-domain
call answers DomainNotFound for them, so the agent never touches a guest it did not define.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import secrets
import threading
import time
import uuid as uuid_mod
import xml.etree.ElementTree as ET
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol, TypeVar

import libvirt

from core import vnc
from core.enums import PowerState
from core.errors import Conflict, DomainNotFound, GatewayTimeout, HypervisorError, Invalid, Unavailable, VdiError
from core.specs import DesktopSpec, DomainStats, HostCaps
from hypervisor_node import guest_agent, hoststats
from hypervisor_node.domxml.designer import (
    GUEST_AGENT_CHANNEL,
    SPICE_MAX_PASSWORD,
    VNC_PASSWORD_LENGTH,
    design_domain,
    valid_to_in,
)
from hypervisor_node.domxml.model import VDI_NS, Domain, Owner
from hypervisor_node.screenshot import to_png

log = logging.getLogger(__name__)
T = TypeVar("T")

# libvirt prints every error to stderr unless a handler is registered; ours are logged when raised.
libvirt.registerErrorHandler(lambda _ctx, _err: None, None)

DEFAULT_MANAGER_ID = "vdi"
MAX_SHUTDOWN_TIMEOUT_S = 3600
MAX_TICKET_SECONDS = 24 * 3600
CUT_TICKET_SECONDS = 60  # the password cut_consoles sets, told to nobody: long enough to take VNC displays with
_SHUTDOWN_POLL_S = 0.25
DEFAULT_BLOCK_JOB_TIMEOUT_S = 600.0
MAX_BLOCK_JOB_TIMEOUT_S = 6 * 3600.0
_BLOCK_JOB_POLL_S = 0.2
# Disk-only: no RAM state (a desktop snapshot is its disk); no libvirt metadata: the manager's database
# records snapshots, and metadata would make libvirt refuse to undefine the domain later; atomic: on a
# failure no disk of the domain switched to a new file. No QUIESCE: it needs qemu-guest-agent in the guest.
_LIVE_SNAPSHOT_FLAGS = (libvirt.VIR_DOMAIN_SNAPSHOT_CREATE_DISK_ONLY | libvirt.VIR_DOMAIN_SNAPSHOT_CREATE_NO_METADATA
                        | libvirt.VIR_DOMAIN_SNAPSHOT_CREATE_ATOMIC)

_STATE_MAP = {
    libvirt.VIR_DOMAIN_NOSTATE: PowerState.UNKNOWN,
    libvirt.VIR_DOMAIN_RUNNING: PowerState.UP,
    libvirt.VIR_DOMAIN_BLOCKED: PowerState.UP,
    libvirt.VIR_DOMAIN_PAUSED: PowerState.PAUSED,
    libvirt.VIR_DOMAIN_SHUTDOWN: PowerState.POWERING_DOWN,
    libvirt.VIR_DOMAIN_SHUTOFF: PowerState.DOWN,
    libvirt.VIR_DOMAIN_CRASHED: PowerState.DOWN,
    libvirt.VIR_DOMAIN_PMSUSPENDED: PowerState.SUSPENDED,
}
MAX_KEYS_AT_ONCE = 16  # virDomainSendKey's limit (VIR_DOMAIN_SEND_KEY_MAX_KEYS)
MAX_KEYCODE = 767  # KEY_MAX of linux/input-event-codes.h
_PAUSED_MIGRATING = {libvirt.VIR_DOMAIN_PAUSED_MIGRATION, libvirt.VIR_DOMAIN_PAUSED_POSTCOPY}


def power_state(state: int, reason: int = 0) -> PowerState:
    """libvirt's (state, reason) pair as our PowerState."""
    if state == libvirt.VIR_DOMAIN_PAUSED and reason in _PAUSED_MIGRATING:
        return PowerState.MIGRATING
    return _STATE_MAP.get(state, PowerState.UNKNOWN)


@dataclass
class GraphicsInfo:
    type: str
    listen: str | None
    port: int | None
    tls_port: int | None


@dataclass
class DomainInfo:
    """One owned domain as the agent reports it."""

    uuid: str
    name: str
    state: str
    desktop_id: str = ""
    graphics: list[GraphicsInfo] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class NodeDriver(Protocol):
    """What the node agent can do to its hypervisor. Implemented by LibvirtDriver.

    Every method raises only core.errors classes: DomainNotFound for a uuid that is not one of our
    domains (foreign domains count as absent), Invalid for malformed arguments, Conflict when the
    domain's power state forbids the action, HypervisorError for any other hypervisor failure.
    Methods are safe to call from several threads at once.
    """

    def capabilities(self) -> HostCaps:
        """The host's domain types, CPUs, memory, free memory and KSM figures."""

    def list_domains(self) -> list[DomainInfo]:
        """Every domain carrying our ownership stamp, running or not (graphics left empty)."""

    def get_domain(self, uuid: str) -> DomainInfo:
        """One owned domain with its power state and its console ports (when running)."""

    def state(self, uuid: str) -> PowerState:
        """The owned domain's power state."""

    def define(self, spec: DesktopSpec) -> DomainInfo:
        """Define (or redefine, idempotently) the domain designed for `spec`, stamped as ours.

        A redefinition of a running domain changes its persistent configuration only. Raises Conflict
        when a foreign domain already has this uuid.
        """

    def undefine(self, uuid: str) -> None:
        """Remove the owned domain's definition (disk files stay). Raises Conflict while it runs."""

    def resize(self, uuid: str, vcpus: int | None = None, memory_mib: int | None = None) -> dict[str, str]:
        """Give the RUNNING domain new vCPUs and/or memory where libvirt can: memory through the balloon up to
        the domain's maximum memory, vCPUs by hot-plug up to its maximum vCPUs. Per field given: "live" when
        the running guest has it now, "next_boot" otherwise (a stopped domain, above the maximum, refused by
        QEMU). The persistent definition is not touched here: define() gives it the new values.
        """

    def domain_disks(self) -> dict[str, list[str]]:
        """Every defined domain's disk files (backing chains as libvirt lists them, running and persistent
        definitions), ours or not, by uuid: files no storage clean-up may delete."""

    def start(self, uuid: str) -> DomainInfo:
        """Boot the domain; a running domain is left as it is."""

    def shutdown(self, uuid: str, timeout: float) -> DomainInfo:
        """Ask the guest to power off (ACPI) and wait up to `timeout` s for it to stop.

        Raises GatewayTimeout when the guest is still running then: it is never destroyed silently.
        """

    def poweroff(self, uuid: str) -> DomainInfo:
        """Pull the plug (destroy); a stopped domain is left as it is."""

    def reboot(self, uuid: str) -> DomainInfo:
        """Ask the running guest to reboot. Raises Conflict when it is not running."""

    def suspend(self, uuid: str) -> DomainInfo:
        """Pause the running domain's vCPUs (memory stays resident). Idempotent on a paused domain."""

    def resume(self, uuid: str) -> DomainInfo:
        """Resume a paused domain. Idempotent on a running one; Conflict on a stopped one."""

    def migrate(self, uuid: str, dest_uri: str, migrate_uri: str | None = None) -> None:
        """Live-migrate the running domain to the libvirt at `dest_uri` over shared storage.

        The definition moves with it (persisted on the destination, undefined here); disks are not
        copied. `migrate_uri` optionally names the address for QEMU's migration stream.
        """

    def set_ticket(self, uuid: str, password: str, valid_seconds: int) -> str:
        """Set the console password (SPICE, and VNC's first 8 characters) valid for `valid_seconds`.

        On a running domain the change is live (no restart) and also written to its configuration.
        Returns passwdValidTo (UTC, YYYY-MM-DDTHH:MM:SS).
        """

    def cut_consoles(self, uuid: str) -> dict[str, int]:
        """Disconnect every console client of the running domain and make every ticket given so far useless: a new
        random password nobody is told (valid CUT_TICKET_SECONDS), SPICE clients disconnected by libvirt
        (connected='disconnect'), VNC clients by taking the display exclusively with that password (QEMU's VNC
        accepts connected='keep' only). Nothing to do on a stopped domain. Returns {"spice": n, "vnc": n}: the
        displays cut."""

    def screenshot(self, uuid: str, screen: int = 0) -> bytes:
        """PNG of the running domain's `screen`. Raises Conflict when it is not running."""

    def send_key(self, uuid: str, keycodes: list[int], hold_ms: int = 50) -> None:
        """Press the keys `keycodes` (Linux input codes, e.g. 29 56 111 for Ctrl+Alt+Del) together on the
        running domain's keyboard, as a person at its console would, then release them. Raises Invalid for
        more than 16 keys or a code outside 1-767, Conflict when the domain is not running."""

    def bulk_stats(self) -> list[DomainStats]:
        """Stats of every owned domain from ONE hypervisor call.

        cpu_usage is the percentage of the domain's vCPUs used since the previous bulk_stats call
        (0 on the first sighting); mem_usage comes from the balloon driver's figures.
        """

    def guest_call(self, uuid: str, command: str, timeout: float = 5.0) -> str:
        """Send one line to the guest agent on the domain's virtio-serial socket, return its one-line reply.

        The request carries a fresh id (hypervisor_node.guest_agent): a late reply to an earlier call
        that timed out is skipped, never returned as this call's answer. Raises Invalid for a command
        that is not one line (or starts with the id mark '@'), GatewayTimeout when the reply has not
        arrived within `timeout` s, Unavailable when the socket cannot be reached, Conflict when the
        domain is not running.
        """

    def snapshot_disk(self, uuid: str, new_overlay_path: str) -> list[str]:
        """Live external disk-only snapshot: the running domain's disk continues in a NEW empty qcow2
        overlay created at `new_overlay_path` (absolute, must not exist), backed by the file it wrote
        until now, which is never written again. The guest keeps running (not quiesced: crash-consistent).

        libvirt rewrites both the live and the persistent definition to the new file. Returns the disk's
        chain afterwards, top first. Idempotent: when the disk already is `new_overlay_path` (a re-run)
        nothing is done. Raises Invalid for a bad path, Conflict when the domain is not running or the
        file exists, HypervisorError when libvirt/QEMU refuse (nothing changed then: the call is atomic).
        """

    def block_commit(self, uuid: str, top: str | None = None, base: str | None = None,
                     timeout: float = DEFAULT_BLOCK_JOB_TIMEOUT_S) -> list[str]:
        """Live merge: write the data of chain member `top` (default: the active file) down into `base`
        (default: top's IMMEDIATE backing file, never the bottom of the chain), then drop the layers
        above base up to top from the running chain, waiting up to `timeout` s for the block job.

        Committing the active file is an active commit that pivots: the domain then writes into `base`.
        Committing an inner file rewrites its child's backing file to `base`. What the guest reads never
        changes; the files dropped from the chain are left on disk for the caller to delete. Both the live
        and the persistent definition follow. Returns the chain afterwards, top first.
        Raises Invalid when top/base are not (in that order) in the running chain, Conflict when the domain
        is not running or another block job runs on the disk, GatewayTimeout (after cancelling the job:
        the chain is as before, `base` may hold some of top's data) when it takes longer than `timeout`.
        """

    def close(self) -> None:
        """Drop the hypervisor connection; guests are not touched."""


class LibvirtDriver:
    """NodeDriver over a libvirt URI (qemu:///system, qemu+ssh://..., test:///path/node.xml).

    One connection per driver, shared by all threads (libvirt connections are thread-safe) and
    reopened on the next call after it drops.
    """

    def __init__(
        self,
        uri: str,
        manager_id: str = DEFAULT_MANAGER_ID,
        domain_types: list[str] | None = None,
        sys_root: str = "/sys",
        trust_shared_storage: bool = False,
        validate_xml: bool = False,
    ) -> None:
        """`domain_types` restricts what capabilities() offers (e.g. ["qemu"] where KVM is broken).

        `trust_shared_storage`: libvirt recognises shared storage by file-system type (NFS, GFS2, Ceph...)
        and refuses a live migration it cannot prove safe. Set it on hosts whose image directory IS
        shared but not recognisable (a bind-mounted or cluster directory): migrations then pass
        VIR_MIGRATE_UNSAFE. Disks are never copied either way.

        `validate_xml`: have libvirt check every defined XML against its RNG schema (~30 ms per define, 25x
        the define itself). Off by default because every shape the designer produces is validated by libvirt
        in the golden-file tests; on, for hosts running an untested libvirt version.
        """
        if not manager_id:
            raise Invalid("manager_id must not be empty: it is the ownership stamp on our domains")
        self.uri = uri
        self.manager_id = manager_id
        self._allowed_types = list(domain_types) if domain_types else None
        self._sys_root = sys_root
        self._conn_lock = threading.Lock()
        self._conn: libvirt.virConnect | None = None
        self._ownership: dict[str, Owner | None] = {}
        self._ownership_lock = threading.Lock()
        self._cpu_samples: dict[str, tuple[int, int]] = {}  # uuid -> (cpu.time ns, monotonic ns)
        self._cpu_lock = threading.Lock()
        self._guest_locks: defaultdict[str, threading.Lock] = defaultdict(threading.Lock)
        self._static_caps: HostCaps | None = None
        self.trust_shared_storage = trust_shared_storage
        self.validate_xml = validate_xml

    # ---- the seam ----------------------------------------------------------------------------------
    def _run(self, action: Callable[[libvirt.virConnect], T], name: str | None = None,
             idempotent: bool = False) -> T:
        """Run `action` with the connection; the only place libvirtError is caught and translated.

        An idempotent action that failed because the connection dropped is retried once on a new one.
        """
        for attempt in (1, 2):
            try:
                return action(self._connection())
            except libvirt.libvirtError as exc:
                if idempotent and attempt == 1 and self._connection_dropped():
                    log.info("libvirt connection to %s dropped; reconnecting", self.uri)
                    continue
                raise _translate(exc, name) from exc
        raise AssertionError("unreachable")

    def _connection(self) -> libvirt.virConnect:
        with self._conn_lock:
            if self._conn is not None and self._conn.isAlive() != 1:
                self._close_quietly(self._conn)
                self._conn = None
            if self._conn is None:
                self._conn = libvirt.open(self.uri)
            return self._conn

    def _connection_dropped(self) -> bool:
        with self._conn_lock:
            conn = self._conn
        try:
            return conn is None or conn.isAlive() != 1
        except libvirt.libvirtError:
            return True

    @staticmethod
    def _close_quietly(conn: libvirt.virConnect) -> None:
        try:
            conn.close()
        except libvirt.libvirtError:
            pass  # already broken; we are discarding it

    def close(self) -> None:
        with self._conn_lock:
            if self._conn is not None:
                self._close_quietly(self._conn)
                self._conn = None

    # ---- ownership -------------------------------------------------------------------------------------
    def _owner_of(self, dom: libvirt.virDomain) -> Owner | None:
        """Our stamp on `dom`, or None. Runs inside _run; an absent stamp is an answer, not an error."""
        try:
            text = dom.metadata(libvirt.VIR_DOMAIN_METADATA_ELEMENT, VDI_NS, 0)
        except libvirt.libvirtError as exc:
            if exc.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN_METADATA:
                return None
            raise
        return Owner.from_metadata_xml(text)

    def _stamp(self, dom: libvirt.virDomain) -> Owner | None:
        """_owner_of, cached per uuid: a domain's stamp only changes when we define it."""
        uuid = dom.UUIDString()
        with self._ownership_lock:
            if uuid in self._ownership:
                return self._ownership[uuid]
        owner = self._owner_of(dom)
        with self._ownership_lock:
            self._ownership[uuid] = owner
        return owner

    def _is_ours(self, dom: libvirt.virDomain) -> bool:
        owner = self._stamp(dom)
        return owner is not None and owner.manager_id == self.manager_id

    def _is_ours_if_present(self, dom: libvirt.virDomain) -> bool:
        """_is_ours, False for a domain undefined by someone else since it was listed."""
        try:
            return self._is_ours(dom)
        except libvirt.libvirtError as exc:
            if exc.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
                return False
            raise

    def _forget(self, uuid: str) -> None:
        with self._ownership_lock:
            self._ownership.pop(uuid, None)
        with self._cpu_lock:
            self._cpu_samples.pop(uuid, None)

    def _find(self, conn: libvirt.virConnect, uuid: str) -> libvirt.virDomain | None:
        try:
            return conn.lookupByUUIDString(uuid)
        except libvirt.libvirtError as exc:
            if exc.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
                return None
            raise

    def _owned(self, conn: libvirt.virConnect, uuid: str) -> libvirt.virDomain:
        dom = self._find(conn, _checked_uuid(uuid))
        if dom is None or not self._is_ours(dom):
            raise DomainNotFound(name=uuid)
        return dom

    # ---- queries ---------------------------------------------------------------------------------------
    def capabilities(self) -> HostCaps:
        def query(conn: libvirt.virConnect) -> HostCaps:
            if self._static_caps is None:
                self._static_caps = self._read_static_caps(conn)
            caps = dataclasses.replace(self._static_caps)
            caps.free_memory_mib = _free_memory_mib(conn, caps.memory_mib)
            ksm = hoststats.read_ksm(self._sys_root)
            caps.ksm_running, caps.ksm_pages_shared, caps.ksm_pages_sharing = (
                ksm.running, ksm.pages_shared, ksm.pages_sharing)
            caps.ksm_saved_mib = hoststats.ksm_saved_mib(ksm)
            return caps

        return self._run(query, idempotent=True)

    def _read_static_caps(self, conn: libvirt.virConnect) -> HostCaps:
        root = ET.fromstring(conn.getCapabilities())
        arch = root.findtext("host/cpu/arch") or "x86_64"
        cpu_model = root.findtext("host/cpu/model") or ""
        types: list[str] = []
        for guest in root.findall("guest"):
            if (guest.findtext("os_type") or "") != "hvm":
                continue
            for dom_el in guest.findall("arch/domain"):
                domain_type = dom_el.get("type", "")
                if domain_type and domain_type not in types:
                    types.append(domain_type)
        if self._allowed_types is not None:
            types = [t for t in types if t in self._allowed_types]
        info = conn.getInfo()  # [model, memory MiB, cpus, MHz, nodes, sockets, cores, threads]
        version = conn.getLibVersion()
        return HostCaps(
            hostname=conn.getHostname(),
            domain_types=types,
            cpus=int(info[2]),
            memory_mib=int(info[1]),
            free_memory_mib=0,
            arch=arch,
            cpu_model=cpu_model or str(info[0]),
            libvirt_version=f"{version // 1_000_000}.{version // 1000 % 1000}.{version % 1000}",
        )

    def list_domains(self) -> list[DomainInfo]:
        def query(conn: libvirt.virConnect) -> list[DomainInfo]:
            out = []
            for dom in conn.listAllDomains(0):
                if not self._is_ours_if_present(dom):
                    continue
                try:
                    state, reason = dom.state(0)
                except libvirt.libvirtError as exc:
                    if exc.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
                        continue  # undefined by someone else between the listing and this look
                    raise
                out.append(DomainInfo(uuid=dom.UUIDString(), name=dom.name(),
                                      state=power_state(state, reason).value,
                                      desktop_id=self._desktop_id(dom)))
            return out

        return self._run(query, idempotent=True)

    def _desktop_id(self, dom: libvirt.virDomain) -> str:
        owner = self._stamp(dom)
        return owner.desktop_id if owner is not None else ""

    def get_domain(self, uuid: str) -> DomainInfo:
        return self._run(lambda conn: self._info(self._owned(conn, uuid)), name=uuid, idempotent=True)

    def _info(self, dom: libvirt.virDomain) -> DomainInfo:
        state, reason = dom.state(0)
        domain = Domain.from_xml(dom.XMLDesc(0))
        return DomainInfo(
            uuid=domain.uuid,
            name=domain.name,
            state=power_state(state, reason).value,
            desktop_id=domain.owner.desktop_id if domain.owner is not None else "",
            graphics=[GraphicsInfo(type=g.type, listen=g.listen, port=g.port, tls_port=g.tls_port)
                      for g in domain.devices.graphics],
        )

    def state(self, uuid: str) -> PowerState:
        def query(conn: libvirt.virConnect) -> PowerState:
            return power_state(*self._owned(conn, uuid).state(0))

        return self._run(query, name=uuid, idempotent=True)

    # ---- definition ----------------------------------------------------------------------------------
    def define(self, spec: DesktopSpec) -> DomainInfo:
        domain = design_domain(spec, self.capabilities())
        domain.owner = Owner(manager_id=self.manager_id,
                             desktop_id=domain.owner.desktop_id if domain.owner else spec.uuid)
        xml = domain.to_xml()

        def act(conn: libvirt.virConnect) -> DomainInfo:
            existing = self._find(conn, spec.uuid)
            if existing is not None and not self._is_ours(existing):
                raise Conflict(f"domain {spec.uuid} on this host was not defined by manager "
                               f"{self.manager_id!r}; refusing to replace it")
            dom = conn.defineXMLFlags(xml, libvirt.VIR_DOMAIN_DEFINE_VALIDATE if self.validate_xml else 0)
            with self._ownership_lock:
                self._ownership[spec.uuid] = domain.owner
            return self._info(dom)

        return self._run(act, name=spec.uuid)

    def undefine(self, uuid: str) -> None:
        def act(conn: libvirt.virConnect) -> None:
            dom = self._owned(conn, uuid)
            if dom.isActive():
                raise Conflict(f"domain {uuid} is running; power it off before removing its definition")
            # the designer gives no UEFI NVRAM, so there is none to remove (nor flag to pass)
            dom.undefineFlags(libvirt.VIR_DOMAIN_UNDEFINE_MANAGED_SAVE
                              | libvirt.VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA)

        self._run(act, name=uuid)
        self._forget(uuid)

    def resize(self, uuid: str, vcpus: int | None = None, memory_mib: int | None = None) -> dict[str, str]:
        for name, value in (("vcpus", vcpus), ("memory_mib", memory_mib)):
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
                raise Invalid(f"{name} must be a positive integer, not {value!r}")

        def act(conn: libvirt.virConnect) -> dict[str, str]:
            dom = self._owned(conn, uuid)
            active = dom.isActive() == 1
            applied: dict[str, str] = {}
            if memory_mib is not None:
                applied["memory_mib"] = "next_boot"
                # the balloon moves between 0 and the maximum the guest was started with
                if active and memory_mib * 1024 <= dom.maxMemory():
                    applied["memory_mib"] = _live(lambda: dom.setMemoryFlags(
                        memory_mib * 1024, libvirt.VIR_DOMAIN_AFFECT_LIVE) == 0, uuid)
            if vcpus is not None:
                applied["vcpus"] = "next_boot"
                if active:  # only up to the maximum vCPUs the domain was started with (the designer's <vcpu>)
                    def hotplug() -> bool:
                        if vcpus > dom.vcpusFlags(libvirt.VIR_DOMAIN_VCPU_LIVE | libvirt.VIR_DOMAIN_VCPU_MAXIMUM):
                            return False
                        return dom.setVcpusFlags(vcpus, libvirt.VIR_DOMAIN_AFFECT_LIVE) == 0

                    applied["vcpus"] = _live(hotplug, uuid)
            return applied

        return self._run(act, name=uuid)

    def domain_disks(self) -> dict[str, list[str]]:
        def query(conn: libvirt.virConnect) -> dict[str, list[str]]:
            out: dict[str, list[str]] = {}
            for dom in conn.listAllDomains(0):
                try:
                    xmls = [dom.XMLDesc(0)]
                    if dom.isActive() and dom.isPersistent():
                        xmls.append(dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE))
                    out[dom.UUIDString()] = sorted({path for xml in xmls for path in _disk_files(xml)})
                except libvirt.libvirtError as exc:
                    if exc.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
                        continue  # undefined between the listing and this look
                    raise
            return out

        return self._run(query, idempotent=True)

    # ---- power -------------------------------------------------------------------------------------------
    def start(self, uuid: str) -> DomainInfo:
        def act(conn: libvirt.virConnect) -> DomainInfo:
            dom = self._owned(conn, uuid)
            if not dom.isActive():
                dom.create()
            return self._info(dom)

        return self._run(act, name=uuid)

    def shutdown(self, uuid: str, timeout: float) -> DomainInfo:
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not 0 < timeout <= MAX_SHUTDOWN_TIMEOUT_S:
            raise Invalid(f"timeout must be a number of seconds in (0, {MAX_SHUTDOWN_TIMEOUT_S}], got {timeout!r}")

        def ask(conn: libvirt.virConnect) -> bool:
            dom = self._owned(conn, uuid)
            if not dom.isActive():
                return False
            dom.shutdown()
            return True

        if self._run(ask, name=uuid):
            deadline = time.monotonic() + timeout
            while self.state(uuid) not in (PowerState.DOWN,):
                if time.monotonic() >= deadline:
                    raise GatewayTimeout(what=f"graceful shutdown of domain {uuid} (it is still running; "
                                              f"power it off to force)", seconds=timeout)
                time.sleep(_SHUTDOWN_POLL_S)
        return self.get_domain(uuid)

    def poweroff(self, uuid: str) -> DomainInfo:
        def act(conn: libvirt.virConnect) -> DomainInfo:
            dom = self._owned(conn, uuid)
            if dom.isActive():
                dom.destroy()
            return self._info(dom)

        return self._run(act, name=uuid)

    def reboot(self, uuid: str) -> DomainInfo:
        def act(conn: libvirt.virConnect) -> DomainInfo:
            dom = self._owned(conn, uuid)
            self._require_active(dom, uuid, "reboot")
            dom.reboot(0)
            return self._info(dom)

        return self._run(act, name=uuid)

    def suspend(self, uuid: str) -> DomainInfo:
        def act(conn: libvirt.virConnect) -> DomainInfo:
            dom = self._owned(conn, uuid)
            self._require_active(dom, uuid, "suspend")
            if dom.state(0)[0] != libvirt.VIR_DOMAIN_PAUSED:
                dom.suspend()
            return self._info(dom)

        return self._run(act, name=uuid)

    def resume(self, uuid: str) -> DomainInfo:
        def act(conn: libvirt.virConnect) -> DomainInfo:
            dom = self._owned(conn, uuid)
            self._require_active(dom, uuid, "resume")
            if dom.state(0)[0] == libvirt.VIR_DOMAIN_PAUSED:
                dom.resume()
            return self._info(dom)

        return self._run(act, name=uuid)

    @staticmethod
    def _require_active(dom: libvirt.virDomain, uuid: str, action: str) -> None:
        if not dom.isActive():
            raise Conflict(f"domain {uuid} is not running; cannot {action} it (start it first)")

    def migrate(self, uuid: str, dest_uri: str, migrate_uri: str | None = None) -> None:
        if not isinstance(dest_uri, str) or "://" not in dest_uri:
            raise Invalid(f"dest_uri must be a libvirt URI such as qemu+tcp://host/system, got {dest_uri!r}")
        if migrate_uri is not None and (not isinstance(migrate_uri, str) or "://" not in migrate_uri):
            raise Invalid(f"migrate_uri must be a URI such as tcp://10.0.0.2, got {migrate_uri!r}")

        def act(conn: libvirt.virConnect) -> None:
            dom = self._owned(conn, uuid)
            self._require_active(dom, uuid, "live-migrate")
            dest = libvirt.open(dest_uri)
            try:
                params: dict[str, Any] = {}
                if migrate_uri is not None:
                    params[libvirt.VIR_MIGRATE_PARAM_URI] = migrate_uri
                # shared storage: no disk copy flags; the definition moves with the guest
                flags = (libvirt.VIR_MIGRATE_LIVE | libvirt.VIR_MIGRATE_PERSIST_DEST
                         | libvirt.VIR_MIGRATE_UNDEFINE_SOURCE)
                if self.trust_shared_storage:
                    flags |= libvirt.VIR_MIGRATE_UNSAFE
                dom.migrate3(dest, params, flags)
            finally:
                self._close_quietly(dest)

        self._run(act, name=uuid)
        self._forget(uuid)

    # ---- console ---------------------------------------------------------------------------------------
    def set_ticket(self, uuid: str, password: str, valid_seconds: int) -> str:
        if not isinstance(password, str) or not 1 <= len(password) <= SPICE_MAX_PASSWORD:
            raise Invalid(f"password must be a string of 1-{SPICE_MAX_PASSWORD} characters")
        if isinstance(valid_seconds, bool) or not isinstance(valid_seconds, int) \
                or not 1 <= valid_seconds <= MAX_TICKET_SECONDS:
            raise Invalid(f"valid_seconds must be an integer in [1, {MAX_TICKET_SECONDS}], got {valid_seconds!r}")
        return self._run(lambda conn: self._set_password(self._owned(conn, uuid), password, valid_seconds)[0],
                         name=uuid)

    def _set_password(self, dom: libvirt.virDomain, password: str, valid_seconds: int, *,
                      disconnect: bool = False) -> tuple[str, list[ET.Element]]:
        """The console password of every SPICE/VNC display, live (when running) and in the configuration. With
        `disconnect`, libvirt drops the SPICE clients. Returns passwdValidTo and the live graphics elements."""
        valid_to = valid_to_in(valid_seconds)
        targets = [(libvirt.VIR_DOMAIN_AFFECT_CONFIG, libvirt.VIR_DOMAIN_XML_INACTIVE)]
        if dom.isActive():
            targets.insert(0, (libvirt.VIR_DOMAIN_AFFECT_LIVE, 0))
        live: list[ET.Element] = []
        for affect, xml_flags in targets:
            # Start from the device as libvirt has it (ports, listen elements): changing anything
            # but the password would be refused on a live domain.
            for graphics in ET.fromstring(dom.XMLDesc(xml_flags)).findall("devices/graphics"):
                kind = graphics.get("type")
                if kind not in ("spice", "vnc"):
                    continue
                graphics.set("passwd", password if kind == "spice" else password[:VNC_PASSWORD_LENGTH])
                graphics.set("passwdValidTo", valid_to)
                if disconnect and kind == "spice" and affect == libvirt.VIR_DOMAIN_AFFECT_LIVE:
                    graphics.set("connected", "disconnect")
                dom.updateDeviceFlags(ET.tostring(graphics, encoding="unicode"), affect)
                if affect == libvirt.VIR_DOMAIN_AFFECT_LIVE:
                    live.append(graphics)
        return valid_to, live

    def cut_consoles(self, uuid: str) -> dict[str, int]:
        password = secrets.token_urlsafe(18)

        def act(conn: libvirt.virConnect) -> list[ET.Element]:
            dom = self._owned(conn, uuid)
            return self._set_password(dom, password, CUT_TICKET_SECONDS, disconnect=True)[1] \
                if dom.isActive() else []

        cut = {"spice": 0, "vnc": 0}
        for graphics in self._run(act, name=uuid):
            kind, port = graphics.get("type"), int(graphics.get("port") or 0)
            if kind == "vnc" and port > 0:
                listen = graphics.get("listen")
                try:
                    vnc.take_exclusively("127.0.0.1" if listen in (None, "", "0.0.0.0", "::") else listen, port,
                                         password[:VNC_PASSWORD_LENGTH])
                except (OSError, vnc.VncRefused) as exc:
                    raise HypervisorError(libvirt_code=libvirt.VIR_ERR_OPERATION_FAILED,
                                          detail=f"could not take VNC display {port} to cut its clients: {exc}") \
                        from exc
            cut[kind] += 1
        return cut

    def screenshot(self, uuid: str, screen: int = 0) -> bytes:
        if isinstance(screen, bool) or not isinstance(screen, int) or screen < 0:
            raise Invalid(f"screen must be a non-negative integer, got {screen!r}")

        def act(conn: libvirt.virConnect) -> tuple[str, bytes]:
            dom = self._owned(conn, uuid)
            self._require_active(dom, uuid, "take a screenshot of")
            stream = conn.newStream(0)
            chunks: list[bytes] = []
            try:
                mime = dom.screenshot(stream, screen, 0)
                stream.recvAll(lambda _st, data, buf: buf.append(data), chunks)
                stream.finish()
            except libvirt.libvirtError:
                stream.abort()
                raise
            return mime or "", b"".join(chunks)

        mime, data = self._run(act, name=uuid)
        return to_png(data, mime)

    def send_key(self, uuid: str, keycodes: list[int], hold_ms: int = 50) -> None:
        if not isinstance(keycodes, list) or not 1 <= len(keycodes) <= MAX_KEYS_AT_ONCE or not all(
                isinstance(k, int) and not isinstance(k, bool) and 1 <= k <= MAX_KEYCODE for k in keycodes):
            raise Invalid(f"keycodes must be 1-{MAX_KEYS_AT_ONCE} Linux input key codes (1-{MAX_KEYCODE}), "
                          f"got {keycodes!r}")
        if isinstance(hold_ms, bool) or not isinstance(hold_ms, int) or not 0 <= hold_ms <= 10_000:
            raise Invalid(f"hold_ms must be a whole number of milliseconds from 0 to 10000, got {hold_ms!r}")

        def act(conn: libvirt.virConnect) -> None:
            dom = self._owned(conn, uuid)
            self._require_active(dom, uuid, "send keys to")
            dom.sendKey(libvirt.VIR_KEYCODE_SET_LINUX, hold_ms, keycodes, len(keycodes), 0)

        self._run(act, name=uuid)

    # ---- stats ------------------------------------------------------------------------------------------
    def bulk_stats(self) -> list[DomainStats]:
        wanted = (libvirt.VIR_DOMAIN_STATS_STATE | libvirt.VIR_DOMAIN_STATS_CPU_TOTAL
                  | libvirt.VIR_DOMAIN_STATS_BALLOON | libvirt.VIR_DOMAIN_STATS_VCPU)

        def query(conn: libvirt.virConnect) -> list[tuple[str, str, dict[str, Any]]]:
            records = conn.getAllDomainStats(wanted, 0)
            return [(dom.UUIDString(), dom.name(), rec) for dom, rec in records if self._is_ours_if_present(dom)]

        sampled_at = time.monotonic_ns()
        out = []
        for uuid, name, rec in self._run(query, idempotent=True):
            state = power_state(rec.get("state.state", 0), rec.get("state.reason", 0))
            vcpus = int(rec.get("vcpu.current", 0))
            cpu_time = int(rec.get("cpu.time", 0))
            out.append(DomainStats(
                uuid=uuid,
                name=name,
                state=state.value,
                cpu_usage=self._cpu_usage(uuid, cpu_time, sampled_at, vcpus) if state == PowerState.UP else 0,
                mem_usage=balloon_usage(rec) if state in (PowerState.UP, PowerState.PAUSED) else 0,
                cpu_time_ns=cpu_time,
                memory_kib=int(rec.get("balloon.current", rec.get("balloon.maximum", 0))),
                vcpus=vcpus,
            ))
        return out

    def _cpu_usage(self, uuid: str, cpu_time: int, now_ns: int, vcpus: int) -> int:
        with self._cpu_lock:
            previous = self._cpu_samples.get(uuid)
            self._cpu_samples[uuid] = (cpu_time, now_ns)
        if previous is None or vcpus <= 0 or cpu_time < previous[0]:
            return 0  # first sighting, or the domain restarted and its counter began again
        elapsed = now_ns - previous[1]
        if elapsed <= 0:
            return 0
        return max(0, min(100, round(100 * (cpu_time - previous[0]) / (elapsed * vcpus))))

    # ---- guest agent ------------------------------------------------------------------------------------
    def guest_call(self, uuid: str, command: str, timeout: float = 5.0) -> str:
        guest_agent.check_command(command)
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not 0 < timeout <= 300:
            raise Invalid(f"timeout must be a number of seconds in (0, 300], got {timeout!r}")

        def find_socket(conn: libvirt.virConnect) -> str | None:
            dom = self._owned(conn, uuid)
            self._require_active(dom, uuid, "call the guest agent of")
            channel = Domain.from_xml(dom.XMLDesc(0)).devices.channel_named(GUEST_AGENT_CHANNEL)
            return channel.source_path if channel is not None else None

        path = self._run(find_socket, name=uuid, idempotent=True)
        if not path:
            raise Unavailable(what=f"the guest agent of domain {uuid}",
                              reason=f"the domain has no {GUEST_AGENT_CHANNEL} channel socket")
        # QEMU's chardev accepts one client at a time: serialise calls per domain.
        with self._guest_locks[uuid]:
            return guest_agent.call(path, command, timeout, what=f"the guest agent of domain {uuid}")

    # ---- live disk snapshots and merges ----------------------------------------------------------------
    def snapshot_disk(self, uuid: str, new_overlay_path: str) -> list[str]:
        _checked_image_path("new_overlay_path", new_overlay_path)

        def act(conn: libvirt.virConnect) -> list[str]:
            dom = self._owned(conn, uuid)
            active = dom.isActive()
            view = _disk_view(dom.XMLDesc(0 if active else libvirt.VIR_DOMAIN_XML_INACTIVE), uuid)
            if view.chain and view.chain[0] == new_overlay_path:
                return view.chain  # a re-run after the snapshot was taken
            self._require_active(dom, uuid, "take a live disk snapshot of")
            if new_overlay_path in view.chain:
                raise Invalid(f"{new_overlay_path} is already in the disk chain of domain {uuid}: "
                              "a live snapshot needs a new file")
            if os.path.lexists(new_overlay_path):
                raise Conflict(f"{new_overlay_path} already exists; a live snapshot creates a new file there")
            dom.snapshotCreateXML(_snapshot_xml(view, new_overlay_path), _LIVE_SNAPSHOT_FLAGS)
            return _disk_view(dom.XMLDesc(0), uuid).chain

        return self._run(act, name=uuid)

    def block_commit(self, uuid: str, top: str | None = None, base: str | None = None,
                     timeout: float = DEFAULT_BLOCK_JOB_TIMEOUT_S) -> list[str]:
        for label, value in (("top", top), ("base", base)):
            if value is not None:
                _checked_image_path(label, value)
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) \
                or not 0 < timeout <= MAX_BLOCK_JOB_TIMEOUT_S:
            raise Invalid(f"timeout must be a number of seconds in (0, {MAX_BLOCK_JOB_TIMEOUT_S:g}], got {timeout!r}")

        def begin(conn: libvirt.virConnect) -> tuple[str, str, str, bool]:
            dom = self._owned(conn, uuid)
            self._require_active(dom, uuid, "live-merge the disk of")
            view = _disk_view(dom.XMLDesc(0), uuid)
            top_path = top or view.chain[0]
            if top_path not in view.chain:
                raise Invalid(f"top {top_path} is not in the disk chain of domain {uuid} "
                              f"({' <- '.join(reversed(view.chain))})")
            below = view.chain[view.chain.index(top_path) + 1:]
            if not below:
                raise Invalid(f"{top_path} has no backing file to commit into")
            # Always name the base: libvirt's own default is the BOTTOM of the chain, i.e. the template.
            base_path = base or below[0]
            if base_path not in below:
                raise Invalid(f"base {base_path} is not below {top_path} in the disk chain of domain {uuid} "
                              f"({' <- '.join(reversed(view.chain))})")
            if dom.blockJobInfo(view.target, 0):
                raise Conflict(f"a block job already runs on disk {view.target} of domain {uuid}; wait for it")
            is_active = top_path == view.chain[0]
            flags = libvirt.VIR_DOMAIN_BLOCK_COMMIT_ACTIVE if is_active else 0
            dom.blockCommit(view.target, base_path, top_path, 0, flags)
            return view.target, top_path, base_path, is_active

        target, top_path, base_path, is_active = self._run(begin, name=uuid)
        what = f"block commit of {top_path} into {base_path} on domain {uuid}"
        deadline = time.monotonic() + timeout

        def step(conn: libvirt.virConnect) -> list[str] | None:
            """One look at the job: the chain when it is over, None while it runs."""
            dom = self._owned(conn, uuid)
            if not dom.isActive():
                raise Conflict(f"domain {uuid} stopped during the {what}; its chain is as the job left it")
            info = dom.blockJobInfo(target, 0)
            if is_active and info and info.get("cur") == info.get("end"):
                try:
                    dom.blockJobAbort(target, libvirt.VIR_DOMAIN_BLOCK_JOB_ABORT_PIVOT)
                except libvirt.libvirtError as exc:
                    if exc.get_error_code() == libvirt.VIR_ERR_BLOCK_COPY_ACTIVE:
                        return None  # all copied but QEMU has not said "ready" yet
                    raise
                info = {}
            if info:
                return None
            chain = _disk_view(dom.XMLDesc(0), uuid).chain
            if top_path in chain:
                error = HypervisorError(libvirt_code=libvirt.VIR_ERR_OPERATION_FAILED,
                                        detail=f"the {what} ended without removing {top_path} from the chain "
                                               "(cancelled or failed; see the libvirtd log)")
                error.libvirt_code = libvirt.VIR_ERR_OPERATION_FAILED  # type: ignore[attr-defined]
                raise error
            return chain

        while True:
            chain = self._run(step, name=uuid)
            if chain is not None:
                return chain
            if time.monotonic() >= deadline:
                self._run(lambda conn: _cancel_block_job(self._owned(conn, uuid), target), name=uuid)
                raise GatewayTimeout(what=f"{what} (cancelled: the chain is as before)", seconds=timeout)
            time.sleep(_BLOCK_JOB_POLL_S)


def balloon_usage(rec: dict[str, Any]) -> int:
    """Percent of the guest's memory in use from balloon stats (guest-reported figures preferred)."""
    available = rec.get("balloon.available")
    if available:
        # 'usable' (what the guest could use without swapping) is the closest to free memory;
        # 'unused' (truly free) is the fallback for guests whose driver does not report it.
        free = rec.get("balloon.usable", rec.get("balloon.unused"))
        if free is not None:
            return _clamp_percent(available - free, available)
    current = rec.get("balloon.current")
    rss = rec.get("balloon.rss")
    if current and rss is not None:
        # no guest figures (no balloon driver in the guest): fall back to the host's view
        return _clamp_percent(rss, current)
    return 0


def _clamp_percent(part: float, whole: float) -> int:
    if whole <= 0:
        return 0
    return max(0, min(100, round(100 * part / whole)))


def _free_memory_mib(conn: libvirt.virConnect, fallback: int) -> int:
    """Runs inside _run. libvirt's test driver reports a fixed toy figure; there free memory is modelled as the
    total minus what its running domains were given, so placement on test-driver hosts behaves like on real ones."""
    if conn.getType().upper() == "TEST":
        active = conn.listAllDomains(libvirt.VIR_CONNECT_LIST_DOMAINS_ACTIVE)
        return max(0, fallback - sum(dom.info()[2] for dom in active) // 1024)
    try:
        return int(conn.getFreeMemory() // (1024 * 1024))
    except libvirt.libvirtError as exc:
        if exc.get_error_code() == libvirt.VIR_ERR_NO_SUPPORT:
            return fallback
        raise


@dataclass(frozen=True)
class _DiskView:
    """The domain's main disk as its XML shows it."""

    target: str  # e.g. vda
    chain: list[str]  # files, top (the one written) first; a stopped domain shows only what its XML lists
    other_targets: list[str]  # the domain's other disks (CD-ROMs...), left out of snapshots


def _disk_view(xml: str, uuid: str) -> _DiskView:
    """The first file-backed disk device (the designer gives a desktop exactly one) and its chain."""
    disks = ET.fromstring(xml).findall("devices/disk")
    main = next((d for d in disks if d.get("device", "disk") == "disk" and d.get("type", "file") == "file"
                 and d.find("target") is not None), None)
    if main is None:
        raise Conflict(f"domain {uuid} has no file-backed disk")
    chain: list[str] = []
    node: ET.Element | None = main
    while node is not None:
        source = node.find("source")
        if source is None or not source.get("file"):
            break
        chain.append(source.get("file", ""))
        node = node.find("backingStore")
    if not chain:
        raise Conflict(f"domain {uuid}'s disk has no source file")
    others = [d.find("target").get("dev", "") for d in disks  # type: ignore[union-attr]
              if d is not main and d.find("target") is not None]
    return _DiskView(main.find("target").get("dev", ""), chain, others)  # type: ignore[union-attr]


def _disk_files(xml: str) -> list[str]:
    """Every file a domain XML's disks name: sources and their backing stores (CD-ROM images too)."""
    return [source.get("file", "") for disk in ET.fromstring(xml).findall("devices/disk")
            for source in disk.iter("source") if source.get("file")]


def _live(change: Callable[[], bool], uuid: str) -> str:
    """"live" when `change` applied itself to the running domain (True), "next_boot" when it could not (False) or
    libvirt refused it (logged)."""
    try:
        return "live" if change() else "next_boot"
    except libvirt.libvirtError as exc:
        log.info("domain %s: live change refused (%s); it applies at the next boot", uuid, exc.get_error_message())
        return "next_boot"


def _snapshot_xml(view: _DiskView, new_overlay_path: str) -> str:
    root = ET.Element("domainsnapshot")
    disks = ET.SubElement(root, "disks")
    disk = ET.SubElement(disks, "disk", name=view.target, snapshot="external", type="file")
    ET.SubElement(disk, "driver", type="qcow2")
    ET.SubElement(disk, "source", file=new_overlay_path)
    for other in view.other_targets:
        ET.SubElement(disks, "disk", name=other, snapshot="no")
    return ET.tostring(root, encoding="unicode")


def _cancel_block_job(dom: libvirt.virDomain, target: str) -> None:
    """Runs inside _run: cancel (never pivot) the disk's block job, if one still runs."""
    if dom.blockJobInfo(target, 0):
        dom.blockJobAbort(target, 0)


def _checked_image_path(label: str, value: object) -> str:
    if not isinstance(value, str) or not value or not os.path.isabs(value) or os.path.normpath(value) != value \
            or "\n" in value:
        raise Invalid(f"{label} must be an absolute, normalised file path such as /images/desk/1.qcow2, "
                      f"got {value!r}")
    return value


def _checked_uuid(value: str) -> str:
    try:
        return str(uuid_mod.UUID(value))
    except (ValueError, AttributeError, TypeError):
        raise Invalid(f"{value!r} is not a domain UUID (expected e.g. {uuid_mod.UUID(int=0)})") from None


def _translate(exc: libvirt.libvirtError, name: str | None) -> VdiError:
    code = exc.get_error_code()
    if code == libvirt.VIR_ERR_NO_DOMAIN:
        return DomainNotFound(name=name or "(unknown)")
    detail = exc.get_error_message() or str(exc)
    log.warning("libvirt error %s on %s: %s", code, name or "host", detail)
    error = HypervisorError(libvirt_code=code, detail=detail)
    error.libvirt_code = code  # type: ignore[attr-defined]
    return error


# ---- console clients: libvirt's graphics events ------------------------------------------------------------
GRAPHICS_PHASES = {libvirt.VIR_DOMAIN_EVENT_GRAPHICS_CONNECT: "connect",
                   libvirt.VIR_DOMAIN_EVENT_GRAPHICS_INITIALIZE: "initialize",
                   libvirt.VIR_DOMAIN_EVENT_GRAPHICS_DISCONNECT: "disconnect"}
_event_loop_lock = threading.Lock()
_event_loop_started = False


@dataclass(frozen=True)
class GraphicsEvent:
    """A console client of one of our domains' displays: its TCP connection opened (connect), it passed
    authentication (initialize: it is attached) or it went away (disconnect). QEMU reports each SPICE channel
    (main, display, inputs...) as a client of its own; `client` is the remote address and port. Phase "stopped"
    (no protocol, no client): the domain stopped, and with it every client, of which QEMU reports nothing."""

    uuid: str
    phase: str
    protocol: str  # spice | vnc ("" when the display port was not found)
    client: str


def start_event_loop() -> None:
    """libvirt's default event loop, once per process, on a daemon thread. Connections that register event
    callbacks must be opened after it (GraphicsWatch opens its own)."""
    global _event_loop_started
    with _event_loop_lock:
        if _event_loop_started:
            return
        libvirt.virEventRegisterDefaultImpl()

        def run() -> None:
            while True:
                if libvirt.virEventRunDefaultImpl() < 0:
                    log.warning("libvirt's event loop failed once; running it again")
                    time.sleep(1)

        threading.Thread(target=run, name="libvirt-events", daemon=True).start()
        _event_loop_started = True


class GraphicsWatch:
    """Calls `on_event` with a GraphicsEvent for every console client coming to or leaving one of the driver's
    own domains (foreign domains stay invisible), from libvirt's graphics events on a connection of its own.
    `ensure()` (re)opens that connection when it is missing or dropped (libvirtd restarted); call it now and
    then. `on_event` runs on libvirt's event thread: it must be quick and must not call libvirt."""

    def __init__(self, driver: LibvirtDriver, on_event: Callable[[GraphicsEvent], None]) -> None:
        self.driver = driver
        self.on_event = on_event
        self._conn: libvirt.virConnect | None = None
        self._callback_ids: list[int] = []
        self._lock = threading.Lock()
        self._failing = False

    def ensure(self) -> bool:
        """True when the callback is registered on a live connection (opening one if needed)."""
        start_event_loop()
        with self._lock:
            if self._conn is not None:
                try:
                    if self._conn.isAlive() == 1:
                        return True
                except libvirt.libvirtError:
                    pass
                LibvirtDriver._close_quietly(self._conn)
                self._conn = None
            try:
                conn = libvirt.open(self.driver.uri)
                self._callback_ids = [
                    conn.domainEventRegisterAny(None, libvirt.VIR_DOMAIN_EVENT_ID_GRAPHICS, self._graphics, None),
                    conn.domainEventRegisterAny(None, libvirt.VIR_DOMAIN_EVENT_ID_LIFECYCLE, self._lifecycle, None)]
            except libvirt.libvirtError as exc:
                if not self._failing:
                    log.warning("cannot watch console clients on %s (%s); trying again later", self.driver.uri, exc)
                self._failing = True
                return False
            if self._failing:
                log.info("watching console clients on %s again", self.driver.uri)
            self._failing = False
            self._conn = conn
            return True

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                try:
                    for callback_id in self._callback_ids:
                        self._conn.domainEventDeregisterAny(callback_id)
                except libvirt.libvirtError:
                    pass  # the connection is gone already
                LibvirtDriver._close_quietly(self._conn)
                self._conn = None

    def _graphics(self, _conn: libvirt.virConnect, dom: libvirt.virDomain, phase: int, local: dict[str, str],
                  remote: dict[str, str], _auth_scheme: str, _subject: Any, _opaque: Any) -> None:
        try:
            if not self.driver._is_ours_if_present(dom):
                return
            port = str(local.get("service", ""))
            protocol = ""
            for graphics in ET.fromstring(dom.XMLDesc(0)).findall("devices/graphics"):
                if port and port in (graphics.get("port"), graphics.get("tlsPort")):
                    protocol = graphics.get("type", "")
            client = f"{remote.get('node', '')}:{remote.get('service', '')}"
            self.on_event(GraphicsEvent(dom.UUIDString(), GRAPHICS_PHASES.get(phase, str(phase)), protocol, client))
        except Exception:  # an exception must not reach libvirt's event loop: log it and carry on
            log.exception("a graphics event of domain %s could not be handled", dom.UUIDString())

    def _lifecycle(self, _conn: libvirt.virConnect, dom: libvirt.virDomain, event: int, _detail: int,
                   _opaque: Any) -> None:
        if event != libvirt.VIR_DOMAIN_EVENT_STOPPED:
            return
        try:
            if self.driver._is_ours_if_present(dom):
                self.on_event(GraphicsEvent(dom.UUIDString(), "stopped", "", ""))
        except Exception:  # as above
            log.exception("a lifecycle event of domain %s could not be handled", dom.UUIDString())
