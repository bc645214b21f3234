"""The host page: its facts and figures, its desktops (the search `Vms: Hosts.name = <host>`) and its latest drain
(the job hosts.drain that moves its running desktops away in maintenance: GET /jobs?kind=hosts.drain&target_id=)."""
from __future__ import annotations

from typing import Any

from sqlalchemy.orm import Session

from manager.api.system import jobs_page
from manager.auth import Principal
from manager.models import Host
from manager.web.admin.objects import Fact, ObjectKind, resource_loader, search_href, search_preview
from manager.web.related import first_page, related_object


def facts(session: Session, h: Host, who: Principal) -> list[Fact]:
    cluster = related_object(session, "clusters", h.cluster_id, who)
    return [
        Fact("Status", h.status, "state"), Fact("Cluster", cluster.name if cluster else h.cluster_id),
        Fact("Address", h.address),
        Fact("Display address", h.display_address or (f"{h.address} (the address)" if h.address else ""),
             optional=True),
        Fact("Node agent", h.agent_url, "code"),
        Fact("Libvirt URI", h.libvirt_uri, "code", optional=True),
        Fact("CPUs", h.cpus), Fact("CPU model", h.cpu_model), Fact("CPU use", h.cpu_usage, "percent"),
        Fact("Memory", h.memory_mib, "mib"), Fact("Free memory", h.free_memory_mib, "mib"),
        Fact("Memory use", h.mem_usage, "percent"), Fact("Running desktops", h.active_desktops),
        Fact("Domain types", h.domain_types), Fact("Libvirt version", h.libvirt_version),
        Fact("KSM", f"running, {h.ksm_pages_sharing:,} pages sharing {h.ksm_pages_shared:,}, "
             f"{h.ksm_saved_mib:,} MiB saved" if h.ksm_running else "off"),
        Fact("Last heartbeat", h.last_heartbeat_at, "when"), Fact("Agent started", h.agent_started_at, "when"),
        Fact("HA score", h.ha_score), Fact("Comment", h.comment, "multiline", optional=True),
        Fact("Created", h.created_at, "when"), Fact("ID", h.id, "code"),
    ]


def related(session: Session, h: Host, who: Principal) -> dict[str, Any]:
    drains = jobs_page(session, first_page(1), kind="hosts.drain", target_id=h.id)["items"] \
        if who.can("jobs:read") else []
    return {"desktops": search_preview(session, "Vms: Hosts.name =", h.name) if who.can("desktops:read") else None,
            "drain": drains[0] if drains else None}


KIND = ObjectKind("hosts", "host", "hosts:read", resource_loader("hosts"), lambda h: h.name, facts, related,
                  event_filter=lambda h: {"host_id": h.id}, plural="Hosts", list_href=search_href("Hosts:"))
