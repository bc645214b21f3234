"""The template page: its settings, its versions, and the pools and desktops built from it."""
from __future__ import annotations

from typing import Any

from sqlalchemy.orm import Session

from image_manager.service import template_versions
from manager.auth import Principal
from manager.models import Template
from manager.web.admin.objects import (Fact, ObjectKind, href, resource_loader, search_href, search_preview,
                                       version_label)
from manager.web.related import related_object, related_objects


def facts(session: Session, t: Template, who: Principal) -> list[Fact]:
    domain = related_object(session, "storage-domains", t.storage_domain_id, who)
    latest = related_object(session, "template-versions", t.latest_version_id, who)
    return [
        Fact("Status", t.status, "state"), Fact("Operating system", t.os_type, "state"),
        Fact("Latest version", version_label(latest) if latest else None, "link",
             f"#version-{latest.number}" if latest else None),
        Fact("vCPUs", t.cpus), Fact("Memory", t.memory_mib, "mib"),
        Fact("Storage domain", domain.name if domain else None),
        Fact("Boot kernel", t.boot_kernel, "code", optional=True),
        Fact("Boot initrd", t.boot_initrd, "code", optional=True),
        Fact("Kernel command line", t.boot_cmdline, "code", optional=True),
        Fact("Installed applications", t.installed_apps.replace(",", ", "), optional=True),
        Fact("Description", t.description, "multiline", optional=True),
        Fact("Comment", t.comment, "multiline", optional=True),
        Fact("Created", t.created_at, "when"), Fact("ID", t.id, "code"),
    ]


def related(session: Session, t: Template, who: Principal) -> dict[str, Any]:
    versions = template_versions(session, t.id)
    # the desktops versions were made from, as GET /desktops/{id} reads them for the viewer
    names = {desktop_id: d.name for desktop_id, d in
             related_objects(session, "desktops", (v.created_from_desktop_id for v in versions), who).items()}
    return {
        "versions": [{"version": v, "latest": v.id == t.latest_version_id,
                      "source": {"name": names[v.created_from_desktop_id],
                                 "href": href("desktops", v.created_from_desktop_id)}
                      if v.created_from_desktop_id in names else None} for v in versions],
        "pools": search_preview(session, "Pools: template =", t.name) if who.can("pools:read") else None,
        "desktops": search_preview(session, "Vms: Templates.name =", t.name) if who.can("desktops:read") else None,
    }


KIND = ObjectKind("templates", "template", "templates:read", resource_loader("templates"), lambda t: t.name, facts,
                  related, event_filter=lambda t: {"template_id": t.id}, plural="Templates",
                  list_href=search_href("Templates:"))
