"""Reconcile a host after its node agent (re)starts: the database decides intent, libvirt decides power state.

- A desktop the database places on the host but libvirt does not know (a host reinstalled, a test-driver host
  restarted, a definition lost) is defined again from the database: one event per desktop fixed.
- A domain carrying our ownership stamp that the database does not know is reported (one event) and left alone:
  a manager never destroys what it cannot account for. So is a domain of a desktop the database places on another
  host (a node speaks only for its own desktops).
- Power states come in with every heartbeat (manager.heartbeat) and are not touched here.
Runs as the job "hosts.reconcile", which the heartbeat ingest enqueues when it sees a new agent start time.
"""
from __future__ import annotations

import logging
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from core.enums import Severity, TaskState
from core.errors import VdiError
from event_manager.service import emit
from manager import console_tls, db
from manager.config import get_settings
from manager.jobs import JobContext, OnCrash, task
from manager.models import Desktop, Host, Template, TemplateVersion, Volume
from manager.provisioning import nodes
from manager.provisioning.service import desktop_spec

log = logging.getLogger(__name__)


def _intended_specs(session: Session, host: Host, desktop_id: str | None = None) -> dict[str, Any]:
    """Specs of the settled desktops placed on `host` (those being provisioned or deleted are left to their jobs),
    or of the one desktop `desktop_id` if it is placed there, whatever it is doing."""
    stmt = (select(Desktop, Template, Volume.path)
            .join(TemplateVersion, Desktop.template_version_id == TemplateVersion.id)
            .join(Template, TemplateVersion.template_id == Template.id)
            .join(Volume, Desktop.volume_id == Volume.id)
            .where(Desktop.host_id == host.id))
    stmt = stmt.where(Desktop.id == desktop_id) if desktop_id else stmt.where(Desktop.task_state.is_(None))
    rows = session.execute(stmt).all()
    return {desktop.id: desktop_spec(desktop, template, path, host.display_listen) for desktop, template, path in rows}


def _redefined(session: Session, name: str, host_name: str, desktop_id: str, host_id: str, actor: str) -> None:
    emit(session, "desktop.redefined", f"desktop {name} was missing on host {host_name}; defined it again from the "
         "database", severity=Severity.WARNING, actor=actor, desktop_id=desktop_id, host_id=host_id)


def define_missing(host_id: str, desktop_id: str, *, actor: str) -> bool:
    """Define again, from the database, a desktop its host says it does not have: what the reconcile does for the
    whole host, for one desktop that cannot wait for it (a start right after the host's agent restarted). True
    when it was defined; False when the database does not place it there (nothing to define)."""
    with db.session_scope() as session:
        host = session.get(Host, host_id)
        spec = _intended_specs(session, host, desktop_id).get(desktop_id) if host is not None else None
        if spec is None:
            return False
        target, host_name = nodes.target_of_host(host), host.name
    nodes.define(target, spec)
    with db.session_scope() as session:
        _redefined(session, spec.name, host_name, desktop_id, host_id, actor)
    return True


def _install_spice_tls(target: nodes.NodeTarget, host_name: str, addresses: list[str]) -> str:
    """Send the host a fresh SPICE TLS certificate from the manager's CA (manager.console_tls); "" when it took it,
    else why not."""
    cert, key = console_tls.host_certificate(host_name, addresses)
    try:
        nodes.install_spice_tls(target, console_tls.ca_certificate(), cert, key)
    except VdiError as exc:
        return exc.message
    return ""


def reconcile_host(host_id: str, *, redefine_known: bool = False) -> dict[str, Any]:
    """Bring one host in line with the database. Returns what was fixed and what was found. `redefine_known`: define
    again the desktops libvirt already knows too (after the host's display address changed: each domain's displays
    listen on the new address from its next start)."""
    with db.session_scope() as session:
        host = session.get(Host, host_id)
        if host is None:
            return {"redefined": [], "unknown": []}
        target = nodes.target_of_host(host)
        intended = _intended_specs(session, host)
        host_name = host.name
        tls_names = [host.console_address, host.address]
    tls_failed = _install_spice_tls(target, host_name, tls_names) if get_settings().spice_tls else ""
    reported = {d["uuid"] if isinstance(d, dict) else d.uuid: d for d in nodes.client(target).list_domains()}
    redefined, updated, failed = [], [], {}
    for desktop_id, spec in intended.items():
        if desktop_id in reported and not redefine_known:
            continue
        try:
            nodes.define(target, spec)
            (updated if desktop_id in reported else redefined).append((desktop_id, spec.name))
        except VdiError as exc:
            failed[spec.name] = exc.message
    unknown_ids = set(reported) - set(intended)
    with db.session_scope() as session:
        known_elsewhere = dict(session.execute(select(Desktop.id, Desktop.host_id)
                                               .where(Desktop.id.in_(unknown_ids))).all()) if unknown_ids else {}
        unknown = sorted(unknown_ids - set(known_elsewhere))
        # a desktop the database places on another host: this host's copy is not claimed, only reported
        foreign = sorted(i for i, on in known_elsewhere.items() if on not in (None, host_id))
        for desktop_id in foreign:
            emit(session, "host.foreign_desktop", f"host {host_name} holds a domain of desktop {desktop_id}, which "
                 "the database places on another host; left untouched", severity=Severity.WARNING,
                 actor="manager", desktop_id=desktop_id, host_id=host_id)
        for desktop_id, name in redefined:
            _redefined(session, name, host_name, desktop_id, host_id, "manager")
        if tls_failed:
            emit(session, "host.spice_tls_failed", f"host {host_name} did not take its SPICE TLS certificate: "
                 f"{tls_failed}; its consoles stay without TLS", severity=Severity.WARNING, actor="manager",
                 host_id=host_id)
        for name, reason in failed.items():
            emit(session, "desktop.redefine_failed", f"desktop {name} is missing on host {host_name} and could not "
                 f"be defined again: {reason}", severity=Severity.ERROR, actor="manager", host_id=host_id)
        for domain_id in unknown:
            emit(session, "host.unknown_domain", f"host {host_name} runs domain {domain_id} stamped by this "
                 "manager but unknown to the database; left untouched", severity=Severity.WARNING,
                 actor="manager", host_id=host_id)
    if redefined or failed or unknown or foreign:
        log.warning("reconciled host %s: %d redefined, %d failed, %d unknown, %d placed elsewhere", host_name,
                    len(redefined), len(failed), len(unknown), len(foreign))
    return {"redefined": [name for _, name in redefined], "updated": [name for _, name in updated], "failed": failed,
            "unknown": unknown, "foreign": foreign}


@task("hosts.reconcile", on_crash=OnCrash.RESUME)
def reconcile_host_job(ctx: JobContext, host_id: str, redefine_known: bool = False) -> dict[str, Any]:
    return reconcile_host(host_id, redefine_known=redefine_known)


@task("desktops.redefine", on_crash=OnCrash.RESUME)
def redefine_desktop(ctx: JobContext, desktop_id: str, fields: list[str] | None = None) -> dict[str, Any]:
    """Define the desktop's domain again from the database on its host (after its CPUs, memory or monitors
    changed: `fields`), then give a running guest what libvirt can change live: memory through the balloon up to
    the maximum it booted with, vCPUs by hot-plug up to its maximum vCPUs; the rest (monitors always) takes
    effect at its next boot. Result: `applied`, per field, "live" or "next_boot". Idempotent (resumable)."""
    with db.session_scope() as session:
        desktop = session.get(Desktop, desktop_id)
        if desktop is not None and desktop.task_state in (TaskState.PROVISIONING, TaskState.DELETING):
            # its own job defines it (from the rows as they are then) or undefines it: never define it again here
            return {"skipped": f"the desktop is {desktop.task_state.value}"}
        host = session.get(Host, desktop.host_id) if desktop is not None and desktop.host_id else None
        spec = _intended_specs(session, host, desktop_id).get(desktop_id) if host is not None else None
        if spec is None:
            return {"skipped": "the desktop is gone or not placed"}
        target = nodes.target_of_host(host)
    nodes.define(target, spec)
    fields = fields or ["cpus", "memory_mib", "monitors"]
    applied = {name: "next_boot" for name in fields}
    if "cpus" in fields or "memory_mib" in fields:
        live = nodes.resize(target, desktop_id, vcpus=spec.vcpus if "cpus" in fields else None,
                            memory_mib=spec.memory_mib if "memory_mib" in fields else None)
        applied.update({"cpus" if name == "vcpus" else name: how for name, how in live.items()})
    return {"redefined": True, "applied": applied}
