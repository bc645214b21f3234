"""Demo data a newcomer can click through. Idempotent: what exists is kept, what is missing is added.

Two hosts run real node agents (manager.embedded_nodes): vs-a on this machine's libvirtd when it is usable (real
QEMU guests booting the tiny demo desktop), vs-b on a libvirt test-driver hypervisor (always; it shows a second
host without a second machine). The template is the demo image (`vdi image build-demo`), imported like any other;
the pool's and carol's desktops are provisioned through the same code as the API (overlays + domain definitions),
and carol's desktop is started when it can really boot.
"""
from __future__ import annotations

import logging
import os
import secrets
import subprocess
import time

from sqlalchemy import select
from sqlalchemy.orm import Session

from core.enums import HostStatus, JobState, OsType, PoolType, PowerState, Role
from core.errors import VdiError
from event_manager.service import emit
from manager import db
from manager.auth import hash_password
from manager.bootstrap import ensure_admin
from manager.config import Settings, ensure_data_dir, get_settings
from manager.embedded_nodes import (EmbeddedNode, EmbeddedNodes, free_port, load_config, save_config,
                                    libvirt_test_driver_uri)
from manager.models import (Cluster, Desktop, Entitlement, Group, Host, Job, Pool, RoleAssignment, StorageDomain,
                            Template, TemplateVersion, User, UserGroupMembership)

log = logging.getLogger(__name__)

DEMO_PASSWORD = "demo-password"
DEMO_USERS = [("alice", "Alice", "Andersen", "Engineering"), ("bob", "Bob", "Berg", "Engineering"),
              ("carol", "Carol", "Castro", "Finance"), ("dave", "Dave", "Dumont", "Support")]
POOL_SIZE = 3


def _get_or_add(session: Session, model: type, where: dict, **values):
    obj = session.scalar(select(model).filter_by(**where))
    if obj is None:
        obj = model(**where, **values)
        session.add(obj)
        session.flush()
    return obj


def libvirtd_usable() -> bool:
    """Can this process run real guests on qemu:///system?"""
    if os.geteuid() != 0:
        return False
    try:
        return subprocess.run(["virsh", "-c", "qemu:///system", "version"], capture_output=True, timeout=30,
                              stdin=subprocess.DEVNULL).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def _node_config(settings: Settings, real: bool) -> list[EmbeddedNode]:
    existing = {n.name: n for n in load_config(settings.data_dir)}
    vs_a_uri = "qemu:///system" if real else libvirt_test_driver_uri(settings.data_dir / "nodes" / "vs-a.xml")
    nodes = []
    for name, uri in (("vs-a", vs_a_uri), ("vs-b", libvirt_test_driver_uri(settings.data_dir / "nodes" / "vs-b.xml"))):
        old = existing.get(name)
        nodes.append(EmbeddedNode(name=name, libvirt_uri=uri, port=old.port if old else free_port(),
                                  token=old.token if old else secrets.token_urlsafe(32)))
    save_config(settings.data_dir, nodes)
    return nodes


def _seed_rows(settings: Settings) -> dict[str, str]:
    """Users, groups, roles, cluster, storage, hosts, template, pool, entitlements. Returns ids by name."""
    storage_dir = settings.effective_storage_dir
    storage_dir.mkdir(parents=True, exist_ok=True)
    with db.session_scope() as session:
        _, generated = ensure_admin(session, settings.admin_password or None,
                                    password_file=settings.data_dir / "admin-password")
        cluster = _get_or_add(session, Cluster, {"name": "Default"}, description="demo cluster")
        storage = _get_or_add(session, StorageDomain, {"name": "shared"}, path=str(storage_dir),
                              description="the directory every host mounts")
        for name in ("vs-a", "vs-b"):
            _get_or_add(session, Host, {"name": name}, cluster_id=cluster.id, address="127.0.0.1", comment="demo host")
        template = session.scalar(select(Template).where(Template.name == "debian-desktop"))
        first_run = template is None
        if first_run:
            template = Template(name="debian-desktop", description="tiny Debian kernel + busybox desktop",
                                os_type=OsType.DEBIAN_12, cpus=1, memory_mib=192, storage_domain_id=storage.id)
            session.add(template)
            session.flush()
        users = {}
        for username, first, last, dept in DEMO_USERS:
            users[username] = _get_or_add(
                session, User, {"username": username, "domain": "local"}, upn=f"{username}@local",
                display_name=f"{first} {last}", first_name=first, last_name=last, department=dept,
                email=f"{username}@example.com", password_hash=hash_password(DEMO_PASSWORD))
        engineering = _get_or_add(session, Group, {"name": "engineering", "domain": "local"}, description="demo group")
        helpdesk = _get_or_add(session, Group, {"name": "helpdesk", "domain": "local"}, description="demo group")
        for username, group in (("alice", engineering), ("bob", engineering), ("dave", helpdesk)):
            _get_or_add(session, UserGroupMembership, {"user_id": users[username].id, "group_id": group.id})
        _get_or_add(session, RoleAssignment, {"group_id": helpdesk.id, "role": Role.HELP_DESK})
        pool = _get_or_add(session, Pool, {"name": "eng"}, pool_type=PoolType.AUTOMATIC, cluster_id=cluster.id,
                           template_id=template.id, size=POOL_SIZE, prestarted=0, name_pattern="eng-###", cpus=1,
                           memory_mib=192, description="engineering floating desktops")
        _get_or_add(session, Entitlement, {"group_id": engineering.id, "pool_id": pool.id})
        if first_run:
            emit(session, "demo.seeded", "demo data created", actor="vdi demo")
        return {"template": template.id, "pool": pool.id, "carol": users["carol"].id, "cluster": cluster.id,
                "generated_password": generated or ""}


def _attach_hosts(nodes: list[EmbeddedNode]) -> None:
    """Point the host rows at their agents and record what each host can run."""
    from manager.nodes.client import NodeClient

    for node in nodes:
        with NodeClient(node.url, node.token, timeout=60) as client:
            caps = client.capabilities()
        with db.session_scope() as session:
            host = session.scalar(select(Host).where(Host.name == node.name))
            host.agent_url, host.agent_token, host.libvirt_uri = node.url, node.token, node.libvirt_uri
            host.cpus, host.memory_mib, host.free_memory_mib = caps.cpus, caps.memory_mib, caps.free_memory_mib
            host.domain_types, host.cpu_model = ",".join(caps.domain_types), caps.cpu_model
            if host.status != HostStatus.MAINTENANCE:
                host.status = HostStatus.UP


def _ensure_template_image(settings: Settings, template_id: str, variant: str = "console") -> None:
    """Import the demo image (`variant`: image_manager.demo_image.VARIANTS) as the template's first version (a job,
    waited for here)."""
    from image_manager import qemu_img
    from image_manager.service import import_template_image

    with db.session_scope() as session:
        template = session.get(Template, template_id)
        version = session.get(TemplateVersion, template.latest_version_id) if template.latest_version_id else None
        if version is not None and version.volume_id is not None:
            return
    source_dir = settings.data_dir / "demo-image"
    try:
        from image_manager.demo_image import ensure_demo_image

        image = ensure_demo_image(variant=variant).publish(settings.effective_storage_dir / "boot")
        source, kernel, initrd, cmdline = image.template, str(image.kernel), str(image.initrd), image.cmdline()
        apps = ",".join(image.apps)
    except VdiError as exc:  # no Debian package lists or tools: an empty disk still makes a clickable demo
        log.warning("could not build the demo image (%s); using an empty disk", exc.message)
        source_dir.mkdir(parents=True, exist_ok=True)
        source = qemu_img.create(source_dir / "empty.qcow2", size=1024 ** 3)
        kernel = initrd = cmdline = apps = ""
    with db.session_scope() as session:
        template = session.get(Template, template_id)
        template.boot_kernel, template.boot_initrd, template.boot_cmdline = kernel, initrd, cmdline
        template.installed_apps = apps
        job_id = import_template_image(session, template, source_path=str(source), actor="vdi demo").id
    _wait_for_job(job_id)


def _wait_for_job(job_id: str, timeout: float = 600) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with db.session_scope() as session:
            job = session.get(Job, job_id)
            if job.state == JobState.SUCCEEDED:
                return
            if job.state in (JobState.FAILED, JobState.CANCELLED):
                raise VdiError(f"demo job {job.kind} {job.state.value}: {job.error}")
        time.sleep(0.2)
    raise VdiError(f"demo job {job_id} did not finish in {timeout:.0f} s")


def _provision(ids: dict[str, str], real: bool) -> str:
    """The pool's and carol's desktops; with real guests carol's is started. Returns what carol's desktop does."""
    from manager.provisioning import service
    from manager.provisioning.tasks import grow_pool

    with db.session_scope() as session:
        have = len(session.scalars(select(Desktop.id).where(Desktop.pool_id == ids["pool"])).all())
        carol_desk = session.scalar(select(Desktop).where(Desktop.name == "carol-finance"))
        vs_a = session.scalar(select(Host.id).where(Host.name == "vs-a"))
    if have < POOL_SIZE:
        grow_pool(None, ids["pool"], POOL_SIZE - have)
    if carol_desk is None:
        with db.session_scope() as session:
            planned = service.plan_desktops(session, [service.DesktopRequest(
                name="carol-finance", template_id=ids["template"], host_id=vs_a, user_ids=[ids["carol"]],
                description="carol's dedicated desktop", cluster_id=ids["cluster"])])
            carol_id = planned[0].desktop_id
            session.add(Entitlement(user_id=ids["carol"], desktop_id=carol_id))
        outcome = service.materialise(planned)
        with db.session_scope() as session:
            service.finish(session, planned, outcome)
        if carol_id not in outcome.created:
            return "carol-finance could not be created (see the events)"
    else:
        carol_id = carol_desk.id
    return _start(carol_id, "carol-finance") if real else "carol-finance is defined, not started"


def _start(desktop_id: str, name: str) -> str:
    """Start the desktop and say what the hypervisor reports. Always asked, never skipped on the database's word:
    its power state is the last heartbeat's observation, stale after the machine, libvirtd or a test-driver host
    restarted while no manager ran (a start of a running domain changes nothing and records what libvirt says;
    one the host lost is defined again first)."""
    from manager.provisioning.power import PowerAction, run_power_action

    try:
        state = run_power_action(desktop_id, PowerAction.START, actor="vdi demo")
    except VdiError as exc:
        log.warning("could not start %s: %s", name, exc.message)
        return f"{name} could not be started: {exc.message}"
    return f"{name} is booting" if state == PowerState.UP else f"{name} is {state.value}, not running"


def seed_demo(real_guests: str = "auto", image_variant: str = "console") -> list[str]:
    """Create the demo objects and return lines telling the operator what to open."""
    settings = get_settings()
    ensure_data_dir(settings.data_dir)
    db.configure(settings.effective_database_url)
    real = {"yes": True, "no": False}.get(real_guests, None)
    if real is None:
        real = libvirtd_usable()
    elif real and not libvirtd_usable():
        raise VdiError("--real-guests yes: libvirtd (qemu:///system) is not usable by this user")
    ids = _seed_rows(settings)
    nodes = _node_config(settings, real)
    # Agents without a manager URL: no heartbeats while the demo is being built (`vdi serve` runs them for real).
    with EmbeddedNodes(settings.data_dir, manager_url=None):
        _attach_hosts(nodes)
        _ensure_template_image(settings, ids["template"], image_variant)
        carol = _provision(ids, real)
    base = settings.effective_public_url
    password = ids["generated_password"] or f"see {settings.data_dir / 'admin-password'} (or VDI_ADMIN_PASSWORD)"
    return [f"Demo ready. Open {base}/docs (API) - log in with POST /api/v1/auth/login.",
            f"  admin@local password: {password}",
            f"  demo users alice, bob, carol, dave (password {DEMO_PASSWORD!r})",
            "  hosts: vs-a " + (f"runs real QEMU guests ({carol})" if real else
                                "uses the libvirt test driver (libvirtd not usable here)")
            + ", vs-b uses the libvirt test driver"]


__all__ = ["seed_demo"]
