"""What the search results table shows for each searchable object: its main columns, each with the search field
that sorts it (a header click rewrites the query's `sortby`), and how its cell links to related objects."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy.orm import Session

from manager.api.resources import RESOURCE_BY_PATH
from manager.auth import Principal
from manager.web.related import related_objects


@dataclass(frozen=True)
class Column:
    key: str                      # the item's attribute
    title: str
    sort: str | None = None       # the search field that sorts by it
    fmt: str = "text"             # text | link | state | percent | mib | when | bool | bytes | ref
    ref: str | None = None        # for "ref": which kind the id names (host, pool, template, user, desktop)


# The kind whose page a "link" column opens, by searched object.
PAGE_KIND = {"Vm": "desktops", "Host": "hosts", "Template": "templates", "User": "users", "Group": "groups",
             "Pool": "pools", "Event": "events"}

COLUMNS: dict[str, list[Column]] = {
    "Vm": [Column("name", "Name", "name", "link"), Column("power_state", "Status", "status", "state"),
           Column("task_state", "Task", "task", "state"), Column("host_id", "Host", fmt="ref", ref="host"),
           Column("pool_id", "Pool", fmt="ref", ref="pool"), Column("ip", "IP address", "ip"),
           Column("cpu_usage", "CPU", "cpu_usage", "percent"), Column("mem_usage", "Memory use", "mem_usage", "percent"),
           Column("logged_in_user", "Logged-in user", "loggedinuser"), Column("cpus", "vCPUs", "vcpus"),
           Column("memory_mib", "Memory", "memory", "mib")],
    "Host": [Column("name", "Name", "name", "link"), Column("status", "Status", "status", "state"),
             Column("address", "Address", "address"), Column("cpu_usage", "CPU", "cpu_usage", "percent"),
             Column("mem_usage", "Memory use", "mem_usage", "percent"), Column("cpus", "CPUs", "cpus"),
             Column("memory_mib", "Memory", "memory", "mib"), Column("free_memory_mib", "Free memory", "free_memory", "mib"),
             Column("active_desktops", "Desktops", "active_vms"),
             Column("last_heartbeat_at", "Last heartbeat", "last_heartbeat", "when")],
    "Template": [Column("name", "Name", "name", "link"), Column("os_type", "OS", "os", "state"),
                 Column("status", "Status", "status", "state"), Column("cpus", "vCPUs", "vcpus"),
                 Column("memory_mib", "Memory", "mem", "mib"), Column("created_at", "Created", "creationdate", "when")],
    "User": [Column("username", "User name", "usrname", "link"), Column("domain", "Domain", "directory"),
             Column("display_name", "Display name", "displayname"), Column("department", "Department", "department"),
             Column("email", "E-mail", "email"), Column("source", "Source", "source", "state"),
             Column("enabled", "Enabled", "enabled", "bool")],
    "Group": [Column("name", "Name", "name", "link"), Column("domain", "Domain", "directory"),
              Column("description", "Description", "description"), Column("source", "Source", "source", "state")],
    "Pool": [Column("name", "Name", "name", "link"), Column("pool_type", "Type", "type", "state"),
             Column("size", "Size", "size"), Column("prestarted", "Prestarted", "prestarted"),
             Column("max_desktops_per_user", "Per user", "max_desktops_per_user"),
             Column("template_id", "Template", fmt="ref", ref="template")],
    "Event": [Column("time", "Time", "time", "when"), Column("severity", "Severity", "severity", "state"),
              Column("code", "Code", "type"), Column("message", "Message", "message"), Column("actor", "By", "usrname")],
    "Cluster": [Column("name", "Name", "name"), Column("description", "Description", "description"),
                Column("cpu_type", "CPU type", "cpu_type")],
    "Storage": [Column("name", "Name", "name"), Column("path", "Path", "path"),
                Column("free_bytes", "Free", "free_size", "bytes"), Column("used_bytes", "Used", "used_size", "bytes"),
                Column("total_bytes", "Total", "total_size", "bytes")],
    "Disk": [Column("path", "Path", "name"), Column("format", "Format", "format"), Column("role", "Role", "role"),
             Column("status", "Status", "status", "state"), Column("desktop_id", "Desktop", fmt="ref", ref="desktop"),
             Column("virtual_size", "Size", "provisioned_size", "bytes"),
             Column("actual_size", "On disk", "actual_size", "bytes")],
}

REF_PAGES = {"host": "hosts", "pool": "pools", "template": "templates", "desktop": "desktops", "user": "users"}


def referenced_names(session: Session, obj: str, items: list[Any], who: Principal) -> dict[str, dict[str, str]]:
    """{ref kind: {id: name}} for the "ref" columns of one page of results: one query per kind, for the ids on
    the page only, read as the API reads them for `who`."""
    out: dict[str, dict[str, str]] = {}
    for column in COLUMNS.get(obj, []):
        if column.fmt != "ref" or column.ref is None:
            continue
        ids = {getattr(item, column.key) for item in items} - {None}
        if not ids:
            continue
        resource = RESOURCE_BY_PATH[REF_PAGES[column.ref]]
        out[column.ref] = {ref_id: resource.label(ref) for ref_id, ref in
                           related_objects(session, resource.path, ids, who).items()}
    return out
