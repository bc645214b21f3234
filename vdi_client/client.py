"""A typed client of the manager's REST API (/api/v1), on httpx.

    from vdi_client import Client
    vdi = Client.login("https://vdi.example.com", "admin", "secret")   # or Client(url, token=...)
    for desktop in vdi.search.iter("Vms: status = up and Pools.name = eng"):
        vdi.desktops.reboot(desktop.id)
    job = vdi.pools.resize(pool_id, size=20)
    vdi.jobs.wait(job, progress=lambda j: print(f"{j.progress:.0f}%"))

Every method that calls the API is marked with the method and path it calls (`@operation`), so that
tests/unit/client/test_coverage.py holds the client against the manager's OpenAPI document: an operation
without a client method fails it. Errors come back as `ApiError` with the server's code, status and message.
"""
from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Iterator
from typing import Any, ClassVar, Generic, TypeVar

import httpx

from vdi_client import models as m
from vdi_client.errors import ApiError, JobFailed, JobTimeout, ServerUnreachable

API = "/api/v1"
F = TypeVar("F", bound=Callable[..., Any])
M = TypeVar("M", bound=m.Resource)


def operation(method: str, path: str) -> Callable[[F], F]:
    """Mark a client method as the one calling `method path` (path below /api/v1; `{collection}` is the
    namespace's collection, e.g. /desktops)."""

    def mark(fn: F) -> F:
        fn.__vdi_operation__ = (method.upper(), path)  # type: ignore[attr-defined]
        return fn

    return mark


def _clean(values: dict[str, Any]) -> dict[str, Any]:
    """Query parameters without the ones left unset."""
    return {k: v for k, v in values.items() if v is not None}


class Namespace:
    """A group of the client's methods (client.desktops, client.jobs, ...)."""

    collection: ClassVar[str] = ""

    def __init__(self, client: Client) -> None:
        self._client = client

    def _call(self, method: str, path: str, **kwargs: Any) -> Any:
        return self._client.request(method, path, **kwargs)


class Crud(Namespace, Generic[M]):
    """list / iter / get of a collection; Create, Update and Delete add the writes the collection has."""

    model: ClassVar[type[m.Resource]]

    @operation("GET", "/{collection}")
    def list(self, *, page: int = 1, per_page: int = 50, sort: str | None = None, order: str = "asc",
             **filters: Any) -> m.Page[M]:
        """One page; `filters` are the collection's exact-match filters (e.g. pool_id for desktops)."""
        data = self._call("GET", f"/{self.collection}",
                          params=_clean({"page": page, "per_page": per_page, "sort": sort, "order": order,
                                         **filters}))
        return m.Page[self.model].model_validate(data)  # type: ignore[name-defined]

    def iter(self, *, per_page: int = 200, **filters: Any) -> Iterator[M]:
        """Every object, page after page."""
        page = 1
        while True:
            got = self.list(page=page, per_page=per_page, **filters)
            yield from got.items
            if page >= got.pages:
                return
            page += 1

    @operation("GET", "/{collection}/{id}")
    def get(self, object_id: str) -> M:
        return self.model.model_validate(self._call("GET", f"/{self.collection}/{object_id}"))  # type: ignore


class Create(Crud[M]):
    @operation("POST", "/{collection}")
    def create(self, **fields: Any) -> M:
        return self.model.model_validate(self._call("POST", f"/{self.collection}", json=fields))  # type: ignore


class Update(Crud[M]):
    @operation("PATCH", "/{collection}/{id}")
    def update(self, object_id: str, **fields: Any) -> M:
        """Change the given fields only."""
        return self.model.model_validate(  # type: ignore[return-value]
            self._call("PATCH", f"/{self.collection}/{object_id}", json=fields))


class Delete(Crud[M]):
    @operation("DELETE", "/{collection}/{id}")
    def delete(self, object_id: str) -> None:
        self._call("DELETE", f"/{self.collection}/{object_id}")


class ObjectEvents(Namespace):
    """GET /<collection>/{id}/events: the events about one object."""

    @operation("GET", "/{collection}/{id}/events")
    def events(self, object_id: str, *, page: int = 1, per_page: int = 50, severity: str | None = None,
               code: str | None = None, since: str | None = None, until: str | None = None) -> m.Page[m.Event]:
        data = self._call("GET", f"/{self.collection}/{object_id}/events",
                          params=_clean({"page": page, "per_page": per_page, "severity": severity, "code": code,
                                         "since": since, "until": until}))
        return m.Page[m.Event].model_validate(data)


# ---- the resources ------------------------------------------------------------------------------------------
class Clusters(Create[m.Cluster], Update[m.Cluster], Delete[m.Cluster]):
    collection, model = "clusters", m.Cluster


class StorageDomains(Create[m.StorageDomain], Update[m.StorageDomain], Delete[m.StorageDomain]):
    collection, model = "storage-domains", m.StorageDomain

    @operation("POST", "/storage-domains/{id}/refresh")
    def refresh(self, domain_id: str) -> m.Job:
        """Measure the domain's space again (a job)."""
        return m.Job.model_validate(self._call("POST", f"/storage-domains/{domain_id}/refresh"))


class Hosts(Create[m.Host], Update[m.Host], Delete[m.Host], ObjectEvents):
    collection, model = "hosts", m.Host

    @operation("POST", "/hosts/{id}/maintenance")
    def maintenance(self, host_id: str, *, reason: str = "", drain: bool = False) -> m.Host:
        """Put the host into maintenance; with `drain` its running desktops are live-migrated away by a job
        (the reply's `drain_job_id`)."""
        return m.Host.model_validate(self._call("POST", f"/hosts/{host_id}/maintenance",
                                                json={"reason": reason, "drain": drain}))

    @operation("POST", "/hosts/{id}/activate")
    def activate(self, host_id: str) -> m.Host:
        return m.Host.model_validate(self._call("POST", f"/hosts/{host_id}/activate"))

    @operation("GET", "/hosts/{id}/fence-agents")
    def fence_agents(self, host_id: str) -> list[dict[str, Any]]:
        return self._call("GET", f"/hosts/{host_id}/fence-agents")

    @operation("PUT", "/hosts/{id}/fence-agents")
    def set_fence_agents(self, host_id: str, agents: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Replace the host's fence agents (tried in order; [] = the host cannot be fenced)."""
        return self._call("PUT", f"/hosts/{host_id}/fence-agents", json={"agents": agents})


class Templates(Create[m.Template], Update[m.Template], Delete[m.Template], ObjectEvents):
    collection, model = "templates", m.Template

    @operation("GET", "/templates/{id}/versions")
    def versions(self, template_id: str) -> list[m.TemplateVersion]:
        return [m.TemplateVersion.model_validate(v) for v in self._call("GET", f"/templates/{template_id}/versions")]

    @operation("POST", "/templates/{id}/versions")
    def new_version(self, template_id: str, desktop_id: str, *, name: str = "") -> m.Job:
        """A new version of the template from a desktop's disk (a job)."""
        return m.Job.model_validate(self._call("POST", f"/templates/{template_id}/versions",
                                               json={"desktop_id": desktop_id, "name": name}))

    @operation("DELETE", "/templates/{id}/versions/{id}")
    def delete_version(self, template_id: str, version_id: str) -> None:
        self._call("DELETE", f"/templates/{template_id}/versions/{version_id}")

    @operation("POST", "/templates/{id}/import")
    def import_image(self, template_id: str, source_path: str, *, format: str | None = None,
                     storage_domain_id: str | None = None, version_name: str = "") -> m.Job:
        """A new version from an image file in one of the manager's import directories (a job)."""
        return m.Job.model_validate(self._call("POST", f"/templates/{template_id}/import", json=_clean({
            "source_path": source_path, "format": format, "storage_domain_id": storage_domain_id,
            "version_name": version_name})))

    @operation("POST", "/templates/{id}/upload")
    def upload(self, template_id: str, data: bytes | Iterator[bytes], *, format: str,
               storage_domain_id: str | None = None, version_name: str | None = None) -> m.Job:
        """A new version from an image sent in the request body (a job)."""
        return m.Job.model_validate(self._call(
            "POST", f"/templates/{template_id}/upload", content=data,
            headers={"Content-Type": "application/octet-stream"},
            params=_clean({"format": format, "storage_domain_id": storage_domain_id, "version_name": version_name})))

    @operation("GET", "/templates/{id}/lineage")
    def lineage(self, template_id: str) -> dict[str, Any]:
        return self._call("GET", f"/templates/{template_id}/lineage")

    @operation("GET", "/templates/{id}/savings")
    def savings(self, template_id: str) -> dict[str, Any]:
        return self._call("GET", f"/templates/{template_id}/savings")

    @operation("POST", "/templates/{id}/versions/{id}/check")
    def check_version(self, template_id: str, version_id: str) -> m.Job:
        return m.Job.model_validate(self._call("POST", f"/templates/{template_id}/versions/{version_id}/check"))

    @operation("POST", "/templates/{id}/versions/{id}/export")
    def export_version(self, template_id: str, version_id: str, *, target_dir: str = "", format: str = "qcow2",
                       compress: bool = False) -> m.Job:
        return m.Job.model_validate(self._call(
            "POST", f"/templates/{template_id}/versions/{version_id}/export",
            json={"target_dir": target_dir, "format": format, "compress": compress}))


class Images(Namespace):
    @operation("GET", "/images/savings")
    def savings(self) -> dict[str, Any]:
        return self._call("GET", "/images/savings")

    @operation("POST", "/images/reconcile")
    def reconcile(self, *, dead_after_seconds: float = 900.0, min_age_seconds: float = 3600.0) -> m.Job:
        return m.Job.model_validate(self._call("POST", "/images/reconcile", json={
            "dead_after_seconds": dead_after_seconds, "min_age_seconds": min_age_seconds}))


class Desktops(Create[m.Desktop], Update[m.Desktop], Delete[m.Desktop], ObjectEvents):
    """create: the desktop, placed, with `job_id` (its overlay and domain are made by that job); update: with
    `job_id` and `applied` (per hardware field: live | next_boot | pending | failed) when CPUs, memory or monitors
    changed."""
    collection, model = "desktops", m.Desktop

    @operation("DELETE", "/desktops/{id}")
    def delete(self, object_id: str, *, force: bool = False) -> m.Job:  # type: ignore[override]
        """Remove the desktop everywhere, as a job (a running one only with `force`: it is powered off first)."""
        return m.Job.model_validate(self._call("DELETE", f"/desktops/{object_id}",
                                               params={"force": "true"} if force else None))

    def _power(self, desktop_id: str, action: str, body: dict[str, Any] | None = None) -> m.Desktop:
        return m.Desktop.model_validate(self._call("POST", f"/desktops/{desktop_id}/{action}", json=body))

    @operation("POST", "/desktops/{id}/start")
    def start(self, desktop_id: str) -> m.Desktop:
        return self._power(desktop_id, "start")

    @operation("POST", "/desktops/{id}/stop")
    def stop(self, desktop_id: str, *, timeout: float | None = None) -> m.Desktop:
        """A clean shutdown, the plug pulled after `timeout` seconds (the server's default when None)."""
        return self._power(desktop_id, "stop", _clean({"timeout": timeout}) or None)

    @operation("POST", "/desktops/{id}/poweroff")
    def poweroff(self, desktop_id: str) -> m.Desktop:
        return self._power(desktop_id, "poweroff")

    @operation("POST", "/desktops/{id}/reboot")
    def reboot(self, desktop_id: str) -> m.Desktop:
        return self._power(desktop_id, "reboot")

    @operation("POST", "/desktops/{id}/suspend")
    def suspend(self, desktop_id: str) -> m.Desktop:
        return self._power(desktop_id, "suspend")

    @operation("POST", "/desktops/{id}/resume")
    def resume(self, desktop_id: str) -> m.Desktop:
        return self._power(desktop_id, "resume")

    @operation("POST", "/desktops/{id}/reset")
    def reset(self, desktop_id: str) -> m.Job:
        """Back to a fresh copy of its template version (a job)."""
        return m.Job.model_validate(self._call("POST", f"/desktops/{desktop_id}/reset"))

    @operation("POST", "/desktops/{id}/migrate")
    def migrate(self, desktop_id: str, *, host_id: str | None = None, placement: str | None = None) -> m.Job:
        """Live-migrate to `host_id`, or to the placement policy's best other host (a job)."""
        return m.Job.model_validate(self._call("POST", f"/desktops/{desktop_id}/migrate",
                                               json=_clean({"host_id": host_id, "placement": placement})))

    @operation("POST", "/desktops/provision")
    def provision(self, *, name: str, template_id: str | None = None, template_version_id: str | None = None,
                  **fields: Any) -> m.Desktop:
        """A new desktop from a template (its latest version) or a version, defined on a host."""
        return m.Desktop.model_validate(self._call("POST", "/desktops/provision", json=_clean({
            "name": name, "template_id": template_id, "template_version_id": template_version_id, **fields})))

    @operation("POST", "/desktops/{id}/deprovision")
    def deprovision(self, desktop_id: str) -> m.Job:
        return m.Job.model_validate(self._call("POST", f"/desktops/{desktop_id}/deprovision"))

    @operation("POST", "/desktops/bulk")
    def bulk(self, action: str, desktop_ids: list[str], **options: Any) -> m.Job:
        """One server-side job acting on many desktops (see bulk_preview for what it would touch)."""
        return m.Job.model_validate(self._call("POST", "/desktops/bulk",
                                               json={"action": action, "desktop_ids": desktop_ids, **options}))

    @operation("POST", "/desktops/bulk/preview")
    def bulk_preview(self, action: str, desktop_ids: list[str], **options: Any) -> dict[str, Any]:
        return self._call("POST", "/desktops/bulk/preview",
                          json={"action": action, "desktop_ids": desktop_ids, **options})

    @operation("POST", "/desktops/{id}/users")
    def attach_user(self, desktop_id: str, user_id: str) -> dict[str, Any]:
        return self._call("POST", f"/desktops/{desktop_id}/users", json={"user_id": user_id})

    @operation("GET", "/desktops/{id}/users")
    def attached_users(self, desktop_id: str, *, page: int = 1, per_page: int = 50) -> m.Page[dict[str, Any]]:
        return m.Page[dict[str, Any]].model_validate(
            self._call("GET", f"/desktops/{desktop_id}/users", params={"page": page, "per_page": per_page}))

    @operation("DELETE", "/desktops/{id}/users/{id}")
    def detach_user(self, desktop_id: str, user_id: str) -> None:
        self._call("DELETE", f"/desktops/{desktop_id}/users/{user_id}")

    @operation("GET", "/desktops/{id}/console")
    def console(self, desktop_id: str, *, protocol: str | None = None) -> m.Connection:
        """An administrator's console ticket (no session, no assignment)."""
        return m.Connection.model_validate(self._call("GET", f"/desktops/{desktop_id}/console",
                                                      params=_clean({"protocol": protocol})))

    @operation("POST", "/desktops/{id}/browser-console")
    def browser_console(self, desktop_id: str) -> dict[str, Any]:
        return self._call("POST", f"/desktops/{desktop_id}/browser-console")

    @operation("POST", "/desktops/{id}/browser-console/disconnect")
    def disconnect_browser_consoles(self, desktop_id: str) -> dict[str, Any]:
        return self._call("POST", f"/desktops/{desktop_id}/browser-console/disconnect")

    @operation("GET", "/desktops/{id}/screenshot")
    def screenshot(self, desktop_id: str, *, screen: int | None = None) -> bytes:
        """The console's screen as PNG bytes."""
        return self._call("GET", f"/desktops/{desktop_id}/screenshot", params=_clean({"screen": screen}))

    @operation("POST", "/desktops/{id}/send-keys")
    def send_keys(self, desktop_id: str, keys: list[str]) -> dict[str, Any]:
        return self._call("POST", f"/desktops/{desktop_id}/send-keys", json={"keys": keys})

    @operation("GET", "/desktops/{id}/snapshots")
    def snapshots(self, desktop_id: str) -> list[dict[str, Any]]:
        return self._call("GET", f"/desktops/{desktop_id}/snapshots")

    @operation("POST", "/desktops/{id}/snapshots")
    def create_snapshot(self, desktop_id: str, name: str, *, description: str = "") -> dict[str, Any]:
        return self._call("POST", f"/desktops/{desktop_id}/snapshots", json={"name": name, "description": description})

    @operation("POST", "/desktops/{id}/snapshots/{id}/revert")
    def revert_snapshot(self, desktop_id: str, snapshot_id: str) -> m.Job:
        return m.Job.model_validate(self._call("POST", f"/desktops/{desktop_id}/snapshots/{snapshot_id}/revert"))

    @operation("POST", "/desktops/{id}/snapshots/{id}/preview")
    def preview_snapshot(self, desktop_id: str, snapshot_id: str) -> m.Job:
        return m.Job.model_validate(self._call("POST", f"/desktops/{desktop_id}/snapshots/{snapshot_id}/preview"))

    @operation("DELETE", "/desktops/{id}/snapshots/{id}")
    def delete_snapshot(self, desktop_id: str, snapshot_id: str) -> m.Job:
        return m.Job.model_validate(self._call("DELETE", f"/desktops/{desktop_id}/snapshots/{snapshot_id}"))

    @operation("POST", "/desktops/{id}/preview/commit")
    def commit_preview(self, desktop_id: str) -> m.Job:
        return m.Job.model_validate(self._call("POST", f"/desktops/{desktop_id}/preview/commit"))

    @operation("POST", "/desktops/{id}/preview/undo")
    def undo_preview(self, desktop_id: str) -> m.Job:
        return m.Job.model_validate(self._call("POST", f"/desktops/{desktop_id}/preview/undo"))

    @operation("POST", "/desktops/{id}/reimage")
    def reimage(self, desktop_id: str, *, template_version_id: str | None = None, keep_snapshots: bool = False,
                power_off: bool = False) -> m.Job:
        """A new disk from a template version (default: the pending one, else the current one), as a job."""
        return m.Job.model_validate(self._call("POST", f"/desktops/{desktop_id}/reimage", json=_clean({
            "template_version_id": template_version_id, "keep_snapshots": keep_snapshots, "power_off": power_off})))

    @operation("POST", "/desktops/{id}/check")
    def check(self, desktop_id: str) -> m.Job:
        return m.Job.model_validate(self._call("POST", f"/desktops/{desktop_id}/check"))

    @operation("POST", "/desktops/{id}/export")
    def export(self, desktop_id: str, *, target_dir: str = "", format: str = "qcow2", compress: bool = False) -> m.Job:
        return m.Job.model_validate(self._call("POST", f"/desktops/{desktop_id}/export", json={
            "target_dir": target_dir, "format": format, "compress": compress}))


class Pools(Create[m.Pool], Update[m.Pool], Delete[m.Pool], ObjectEvents):
    collection, model = "pools", m.Pool

    @operation("POST", "/pools/{id}/provision")
    def provision(self, pool_id: str, *, placement: str | None = None) -> m.Job:
        """Create the desktops the pool lacks (a job)."""
        return m.Job.model_validate(self._call("POST", f"/pools/{pool_id}/provision",
                                               json=_clean({"placement": placement}) or None))

    @operation("POST", "/pools/{id}/resize")
    def resize(self, pool_id: str, size: int, *, prestarted: int | None = None, placement: str | None = None) -> m.Job:
        """Grow or shrink the pool to `size` desktops (a job)."""
        return m.Job.model_validate(self._call("POST", f"/pools/{pool_id}/resize", json=_clean({
            "size": size, "prestarted": prestarted, "placement": placement})))

    @operation("POST", "/pools/{id}/maintain")
    def maintain(self, pool_id: str) -> m.Job:
        return m.Job.model_validate(self._call("POST", f"/pools/{pool_id}/maintain"))

    @operation("POST", "/pools/{id}/desktops/{id}/assign")
    def assign(self, pool_id: str, desktop_id: str, user_id: str) -> m.Desktop:
        return m.Desktop.model_validate(self._call("POST", f"/pools/{pool_id}/desktops/{desktop_id}/assign",
                                                   json={"user_id": user_id}))

    @operation("POST", "/pools/{id}/desktops/{id}/unassign")
    def unassign(self, pool_id: str, desktop_id: str) -> m.Desktop:
        return m.Desktop.model_validate(self._call("POST", f"/pools/{pool_id}/desktops/{desktop_id}/unassign"))

    @operation("POST", "/pools/{id}/template-version")
    def roll_out(self, pool_id: str, template_version_id: str) -> dict[str, Any]:
        """Move the pool to a template version: idle desktops are re-imaged now (`job_ids`), busy ones when their
        user leaves (`pending`)."""
        return self._call("POST", f"/pools/{pool_id}/template-version",
                          json={"template_version_id": template_version_id})


class Users(Create[m.User], Update[m.User], Delete[m.User], ObjectEvents):
    collection, model = "users", m.User

    @operation("GET", "/users/{id}/access")
    def access(self, user_id: str, *, pool: str | None = None) -> dict[str, Any]:
        """What the user may use and why (entitlements, through which groups)."""
        return self._call("GET", f"/users/{user_id}/access", params=_clean({"pool": pool}))


class Groups(Create[m.Group], Update[m.Group], Delete[m.Group]):
    collection, model = "groups", m.Group

    @operation("GET", "/groups/{id}/members")
    def members(self, group_id: str, *, nested: bool = False, page: int = 1, per_page: int = 50) -> m.Page[m.User]:
        return m.Page[m.User].model_validate(self._call("GET", f"/groups/{group_id}/members", params={
            "nested": nested, "page": page, "per_page": per_page}))

    @operation("GET", "/groups/{id}/subgroups")
    def subgroups(self, group_id: str, *, page: int = 1, per_page: int = 50) -> m.Page[m.Group]:
        return m.Page[m.Group].model_validate(self._call("GET", f"/groups/{group_id}/subgroups",
                                                         params={"page": page, "per_page": per_page}))

    @operation("GET", "/groups/{id}/parents")
    def parents(self, group_id: str, *, page: int = 1, per_page: int = 50) -> m.Page[m.Group]:
        return m.Page[m.Group].model_validate(self._call("GET", f"/groups/{group_id}/parents",
                                                         params={"page": page, "per_page": per_page}))


class Entitlements(Create[m.Entitlement], Delete[m.Entitlement]):
    collection, model = "entitlements", m.Entitlement


class RoleAssignments(Create[m.RoleAssignment], Delete[m.RoleAssignment]):
    collection, model = "role-assignments", m.RoleAssignment


class Tags(Create[m.Tag], Update[m.Tag], Delete[m.Tag]):
    collection, model = "tags", m.Tag

    @operation("POST", "/tags/{id}/objects")
    def attach(self, tag_id: str, kind: str, ids: list[str]) -> dict[str, Any]:
        return self._call("POST", f"/tags/{tag_id}/objects", json={"kind": kind, "ids": ids})

    @operation("DELETE", "/tags/{id}/objects")
    def detach(self, tag_id: str, kind: str, ids: list[str]) -> dict[str, Any]:
        return self._call("DELETE", f"/tags/{tag_id}/objects", json={"kind": kind, "ids": ids})


class Bookmarks(Create[m.Bookmark], Update[m.Bookmark], Delete[m.Bookmark]):
    collection, model = "bookmarks", m.Bookmark

    @operation("GET", "/bookmarks/{id}/run")
    def run(self, bookmark_id: str, *, page_size: int = 100, case_sensitive: bool = False) -> m.SearchPage:
        return m.SearchPage.model_validate(self._call("GET", f"/bookmarks/{bookmark_id}/run", params={
            "page_size": page_size, "case_sensitive": case_sensitive}))


PAGE_AT_END = re.compile(r"\s+page\s+\d+\s*$", re.IGNORECASE)
# `sortby <field>` at the end: the language takes `page N` after it only once a direction is written
SORT_WITHOUT_DIRECTION = re.compile(r"\bsortby\s+[\w.]+\s*$", re.IGNORECASE)


class Search(Namespace):
    @operation("GET", "/search")
    def page(self, query: str, *, page_size: int = 100, case_sensitive: bool = False) -> m.SearchPage:
        """One page of a query in the search language (its `page N` picks which)."""
        return m.SearchPage.model_validate(self._call("GET", "/search", params={
            "q": query, "page_size": page_size, "case_sensitive": case_sensitive}))

    def iter(self, query: str, *, page_size: int = 100, case_sensitive: bool = False) -> Iterator[m.Resource]:
        """Every match, page after page, as the model of the searched kind (Desktop for `Vms:`, Host for
        `Hosts:`, ...). A query ending in `page N` yields that page only."""
        if PAGE_AT_END.search(query):
            yield from self._typed(self.page(query, page_size=page_size, case_sensitive=case_sensitive))
            return
        if SORT_WITHOUT_DIRECTION.search(query):
            query = f"{query.rstrip()} asc"
        number = 1
        while True:
            got = self.page(f"{query} page {number}", page_size=page_size, case_sensitive=case_sensitive)
            yield from self._typed(got)
            if number >= got.pages:
                return
            number += 1

    @staticmethod
    def _typed(page: m.SearchPage) -> Iterator[m.Resource]:
        model = m.MODEL_OF_KIND.get(page.kind, m.Resource)
        for item in page.items:
            yield model.model_validate(item)

    @operation("GET", "/search/complete")
    def complete(self, partial_query: str) -> dict[str, Any]:
        """Suggestions for the next word of a partly typed query."""
        return self._call("GET", "/search/complete", params={"q": partial_query})


class Events(Namespace):
    @operation("GET", "/events")
    def list(self, *, page: int = 1, per_page: int = 50, **filters: Any) -> m.Page[m.Event]:
        """One page of events, newest first; filters: severity, code, user_id, desktop_id, host_id, pool_id,
        template_id, job_id, correlation_id, since, until."""
        return m.Page[m.Event].model_validate(self._call("GET", "/events", params=_clean({
            "page": page, "per_page": per_page, **filters})))

    @operation("GET", "/events/{id}")
    def get(self, event_id: int) -> m.Event:
        return m.Event.model_validate(self._call("GET", f"/events/{event_id}"))

    @operation("GET", "/events/stream")
    def stream(self, *, after_id: int | None = None, reconnect: bool = True) -> Iterator[m.Event]:
        """Events as they happen (server-sent events), after `after_id` if given. When the connection drops the
        stream resumes after the last event seen (Last-Event-ID), unless `reconnect` is false."""
        last = after_id
        while True:
            try:
                for event in self._read_stream(last):
                    last = event.id
                    yield event
            except ServerUnreachable:
                if not reconnect:
                    raise
            if not reconnect:
                return
            time.sleep(1.0)  # the server closed the stream or went away: resume shortly, not in a tight loop

    def _read_stream(self, after_id: int | None) -> Iterator[m.Event]:
        headers = {"Accept": "text/event-stream"}
        if after_id is not None:
            headers["Last-Event-ID"] = str(after_id)
        with self._client.stream("GET", "/events/stream", headers=headers) as lines:
            data: list[str] = []
            for line in lines:
                if line.startswith("data:"):
                    data.append(line[5:].lstrip())
                elif line == "" and data:
                    yield m.Event.model_validate(json.loads("\n".join(data)))
                    data = []


class Jobs(ObjectEvents):
    collection = "jobs"

    @operation("GET", "/jobs")
    def list(self, *, page: int = 1, per_page: int = 50, state: str | None = None, kind: str | None = None,
             target_id: str | None = None) -> m.Page[m.Job]:
        return m.Page[m.Job].model_validate(self._call("GET", "/jobs", params=_clean({
            "page": page, "per_page": per_page, "state": state, "kind": kind, "target_id": target_id})))

    @operation("GET", "/jobs/{id}")
    def get(self, job_id: str) -> m.Job:
        return m.Job.model_validate(self._call("GET", f"/jobs/{job_id}"))

    @operation("POST", "/jobs/{id}/cancel")
    def cancel(self, job_id: str) -> m.Job:
        return m.Job.model_validate(self._call("POST", f"/jobs/{job_id}/cancel"))

    def wait(self, job: m.Job | str, *, timeout: float | None = None, interval: float = 0.5,
             progress: Callable[[m.Job], None] | None = None, check: bool = True) -> m.Job:
        """Poll the job until it has finished and return its last state. `progress(job)` is called with each
        state read (and the first); with `check`, a failed or cancelled job raises JobFailed. JobTimeout after
        `timeout` seconds (None: wait as long as it takes)."""
        current = job if isinstance(job, m.Job) else self.get(job)
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            if progress is not None:
                progress(current)
            if current.finished:
                break
            if deadline is not None and time.monotonic() >= deadline:
                raise JobTimeout(current, timeout or 0)
            time.sleep(interval)
            current = self.get(current.id)
        if check and current.state != "succeeded":
            raise JobFailed(current)
        return current


class Alerts(Namespace):
    @operation("GET", "/alerts")
    def list(self, *, page: int = 1, per_page: int = 50, state: str | None = None, kind: str | None = None,
             object_id: str | None = None) -> m.Page[m.Alert]:
        return m.Page[m.Alert].model_validate(self._call("GET", "/alerts", params=_clean({
            "page": page, "per_page": per_page, "state": state, "kind": kind, "object_id": object_id})))

    @operation("POST", "/alerts/{id}/acknowledge")
    def acknowledge(self, alert_id: str) -> m.Alert:
        return m.Alert.model_validate(self._call("POST", f"/alerts/{alert_id}/acknowledge"))

    @operation("POST", "/alerts/{id}/resolve")
    def resolve(self, alert_id: str) -> m.Alert:
        return m.Alert.model_validate(self._call("POST", f"/alerts/{alert_id}/resolve"))


class Notifications(Namespace):
    @operation("GET", "/notifications/subscriptions")
    def list(self) -> list[m.Subscription]:
        return [m.Subscription.model_validate(x) for x in self._call("GET", "/notifications/subscriptions")]

    @operation("POST", "/notifications/subscriptions")
    def create(self, *, name: str, url: str, **fields: Any) -> m.Subscription:
        return m.Subscription.model_validate(self._call("POST", "/notifications/subscriptions",
                                                        json={"name": name, "url": url, **fields}))

    @operation("GET", "/notifications/subscriptions/{id}")
    def get(self, subscription_id: str) -> m.Subscription:
        return m.Subscription.model_validate(self._call("GET", f"/notifications/subscriptions/{subscription_id}"))

    @operation("PATCH", "/notifications/subscriptions/{id}")
    def update(self, subscription_id: str, **fields: Any) -> m.Subscription:
        return m.Subscription.model_validate(self._call("PATCH", f"/notifications/subscriptions/{subscription_id}",
                                                        json=fields))

    @operation("DELETE", "/notifications/subscriptions/{id}")
    def delete(self, subscription_id: str) -> None:
        self._call("DELETE", f"/notifications/subscriptions/{subscription_id}")


class Sessions(Namespace):
    @operation("GET", "/sessions")
    def list(self, *, page: int = 1, per_page: int = 50, **filters: Any) -> m.Page[m.Session]:
        """Console sessions; filters: state, user_id, desktop_id, pool_id."""
        return m.Page[m.Session].model_validate(self._call("GET", "/sessions", params=_clean({
            "page": page, "per_page": per_page, **filters})))

    @operation("POST", "/sessions/{id}/logoff")
    def logoff(self, session_id: str) -> m.Session:
        return m.Session.model_validate(self._call("POST", f"/sessions/{session_id}/logoff"))


class Broker(Namespace):
    @operation("POST", "/broker/connect")
    def connect(self, *, pool: str | None = None, pool_id: str | None = None, desktop_id: str | None = None,
                new_desktop: bool = False, client: dict[str, Any] | None = None) -> m.Connection:
        """A desktop of a pool (by name or id) or a given desktop, started if needed, and its console ticket."""
        body = _clean({"pool": pool, "pool_id": pool_id, "desktop_id": desktop_id, "client": client})
        return m.Connection.model_validate(self._call("POST", "/broker/connect", json={**body,
                                                                                       "new_desktop": new_desktop}))

    @operation("GET", "/broker/sessions/{id}/console-file")
    def console_file(self, session_id: str) -> str:
        """The session's .vv console file (for remote-viewer)."""
        return self._call("GET", f"/broker/sessions/{session_id}/console-file")

    @operation("POST", "/broker/disconnect")
    def disconnect(self, session_id: str) -> m.Session:
        return m.Session.model_validate(self._call("POST", "/broker/disconnect", json={"session_id": session_id}))

    @operation("POST", "/broker/logoff")
    def logoff(self, session_id: str) -> m.Session:
        return m.Session.model_validate(self._call("POST", "/broker/logoff", json={"session_id": session_id}))

    @operation("POST", "/broker/browser-console")
    def browser_console(self, *, pool: str | None = None, pool_id: str | None = None, desktop_id: str | None = None,
                        new_desktop: bool = False) -> dict[str, Any]:
        body = _clean({"pool": pool, "pool_id": pool_id, "desktop_id": desktop_id})
        return self._call("POST", "/broker/browser-console", json={**body, "new_desktop": new_desktop})


class Me(Namespace):
    """The calling user's own desktops, pools, sessions and preferences (what the portal shows)."""

    @operation("GET", "/me/desktops")
    def desktops(self) -> list[dict[str, Any]]:
        return self._call("GET", "/me/desktops")

    @operation("GET", "/me/pools")
    def pools(self) -> list[dict[str, Any]]:
        return self._call("GET", "/me/pools")

    @operation("POST", "/me/desktops/{id}/reboot")
    def reboot(self, desktop_id: str) -> dict[str, Any]:
        return self._call("POST", f"/me/desktops/{desktop_id}/reboot")

    @operation("POST", "/me/desktops/{id}/reset")
    def reset(self, desktop_id: str) -> m.Job:
        return m.Job.model_validate(self._call("POST", f"/me/desktops/{desktop_id}/reset"))

    @operation("POST", "/me/desktops/{id}/send-keys")
    def send_keys(self, desktop_id: str, keys: list[str]) -> dict[str, Any]:
        return self._call("POST", f"/me/desktops/{desktop_id}/send-keys", json={"keys": keys})

    @operation("POST", "/me/desktops/{id}/extend")
    def extend(self, desktop_id: str) -> dict[str, Any]:
        return self._call("POST", f"/me/desktops/{desktop_id}/extend")

    @operation("GET", "/me/preferences")
    def preferences(self) -> dict[str, Any]:
        return self._call("GET", "/me/preferences")

    @operation("PATCH", "/me/preferences")
    def set_preferences(self, **fields: Any) -> dict[str, Any]:
        return self._call("PATCH", "/me/preferences", json=fields)

    @operation("GET", "/me/sessions")
    def sessions(self, *, include_ended: bool = False) -> list[m.Session]:
        return [m.Session.model_validate(x) for x in self._call("GET", "/me/sessions",
                                                                 params={"include_ended": include_ended})]

    @operation("GET", "/me/events")
    def events(self, *, limit: int | None = None) -> list[m.Event]:
        return [m.Event.model_validate(x) for x in self._call("GET", "/me/events", params=_clean({"limit": limit}))]


class Directory(Namespace):
    @operation("POST", "/directory/sync")
    def sync(self, *, full: bool | None = None, dry_run: bool = False) -> Any:
        return self._call("POST", "/directory/sync", json={"full": full, "dry_run": dry_run})

    @operation("GET", "/directory/status")
    def status(self) -> dict[str, Any]:
        return self._call("GET", "/directory/status")


class Policies(Namespace):
    @operation("POST", "/policies/run")
    def run(self, *, dry_run: bool = True, cluster_id: str | None = None) -> dict[str, Any]:
        """One round of the scheduling policies now, in every cluster or one: `decisions` (each with its policy,
        action and reason); unless `dry_run` (the default), carried out as `jobs`, with the ones refused at once
        in `failed`."""
        return self._call("POST", "/policies/run", json=_clean({"dry_run": dry_run, "cluster": cluster_id}))

    @operation("GET", "/clusters/{id}/policies")
    def get(self, cluster_id: str) -> dict[str, Any]:
        """A cluster's policy settings (load balancing, power saving, idle desktops, memory density)."""
        return self._call("GET", f"/clusters/{cluster_id}/policies")

    @operation("PUT", "/clusters/{id}/policies")
    def set(self, cluster_id: str, policies: dict[str, Any]) -> dict[str, Any]:
        """Replace a cluster's policy settings (what `get` returns, changed)."""
        return self._call("PUT", f"/clusters/{cluster_id}/policies", json=policies)


class Planner(Namespace):
    """The capacity planner (docs/planner.md): operations in a desktop's guest, and the stored runs."""

    @operation("GET", "/desktops/{id}/planner/apps")
    def apps(self, desktop_id: str) -> dict[str, Any]:
        """The planner applications of a running desktop and their operations."""
        return self._call("GET", f"/desktops/{desktop_id}/planner/apps")

    @operation("POST", "/desktops/{id}/planner/op")
    def run_operation(self, desktop_id: str, *, app: str, op: str, seq: int, code: int,
                      timeout_s: float = 60.0) -> dict[str, Any]:
        """Run one operation in the desktop and answer when it ended (`ok` false: the application failed)."""
        return self._call("POST", f"/desktops/{desktop_id}/planner/op", json={
            "app": app, "op": op, "seq": seq, "code": code, "timeout_s": timeout_s})

    @operation("POST", "/planner/runs")
    def store_run(self, run: dict[str, Any]) -> dict[str, Any]:
        """Keep a finished run (users, samples, summary...); the reply names it and its report."""
        return self._call("POST", "/planner/runs", json=run)

    @operation("GET", "/planner/runs")
    def runs(self) -> list[dict[str, Any]]:
        """The newest runs, newest first."""
        return self._call("GET", "/planner/runs")

    @operation("GET", "/planner/runs/{id}")
    def run(self, run_id: str) -> dict[str, Any]:
        """A run with every sample."""
        return self._call("GET", f"/planner/runs/{run_id}")

    @operation("GET", "/planner/runs/{id}/samples.csv")
    def samples_csv(self, run_id: str) -> str:
        return self._call("GET", f"/planner/runs/{run_id}/samples.csv")

    @operation("GET", "/planner/runs/{id}/report")
    def report(self, run_id: str) -> str:
        """The run's HTML report (figures inline)."""
        return self._call("GET", f"/planner/runs/{run_id}/report")


class Auth(Namespace):
    @operation("POST", "/auth/login")
    def login(self, username: str, password: str) -> dict[str, Any]:
        """Log in with a password; the client uses the returned session token from now on."""
        data = self._call("POST", "/auth/login", json={"username": username, "password": password})
        self._client.token = data["token"]
        return data

    @operation("POST", "/auth/logout")
    def logout(self) -> None:
        """End the session (and revoke the tokens it minted)."""
        self._call("POST", "/auth/logout")
        self._client.token = None

    @operation("GET", "/auth/me")
    def me(self) -> dict[str, Any]:
        return self._call("GET", "/auth/me")

    @operation("POST", "/auth/tokens")
    def create_token(self, *, name: str = "", lifetime_days: int | None = None,
                     password: str | None = None) -> dict[str, Any]:
        """An API token for scripts (its secret is in `token`, shown once). With `password` it outlives the
        credential that asked for it."""
        return self._call("POST", "/auth/tokens", json=_clean({"name": name, "lifetime_days": lifetime_days,
                                                               "password": password}))


class System(Namespace):
    @operation("GET", "/health")
    def health(self) -> dict[str, Any]:
        return self._call("GET", "/health")

    @operation("GET", "/dashboard")
    def dashboard(self) -> dict[str, Any]:
        return self._call("GET", "/dashboard")

    @operation("GET", "/ha")
    def ha(self) -> dict[str, Any]:
        """The HA leader, its lease and every manager instance."""
        return self._call("GET", "/ha")


class Client:
    """The manager's API. `url` is the manager's base URL (https://vdi.example.com); `token` a bearer token
    (an API token from `vdi login` or auth.create_token, or a session's from auth.login)."""

    NAMESPACES: ClassVar[dict[str, type[Namespace]]] = {
        "auth": Auth, "system": System, "clusters": Clusters, "hosts": Hosts, "storage_domains": StorageDomains,
        "templates": Templates, "images": Images, "desktops": Desktops, "pools": Pools, "users": Users,
        "groups": Groups, "entitlements": Entitlements, "role_assignments": RoleAssignments, "tags": Tags,
        "bookmarks": Bookmarks, "search": Search, "events": Events, "jobs": Jobs, "alerts": Alerts,
        "notifications": Notifications, "sessions": Sessions, "broker": Broker, "me": Me, "directory": Directory,
        "policies": Policies, "planner": Planner,
    }
    auth: Auth
    system: System
    clusters: Clusters
    hosts: Hosts
    storage_domains: StorageDomains
    templates: Templates
    images: Images
    desktops: Desktops
    pools: Pools
    users: Users
    groups: Groups
    entitlements: Entitlements
    role_assignments: RoleAssignments
    tags: Tags
    bookmarks: Bookmarks
    search: Search
    events: Events
    jobs: Jobs
    alerts: Alerts
    notifications: Notifications
    sessions: Sessions
    broker: Broker
    me: Me
    directory: Directory
    policies: Policies
    planner: Planner

    def __init__(self, url: str, token: str | None = None, *, timeout: float = 60.0, verify: bool | str = True,
                 transport: httpx.BaseTransport | None = None) -> None:
        self.url = url.rstrip("/")
        self.token = token
        self._http = httpx.Client(base_url=self.url + API, timeout=timeout, verify=verify, transport=transport,
                                  headers={"User-Agent": "vdi-client"})
        for name, cls in self.NAMESPACES.items():
            setattr(self, name, cls(self))

    @classmethod
    def login(cls, url: str, username: str, password: str, **kwargs: Any) -> Client:
        """A client logged in with a password."""
        client = cls(url, **kwargs)
        client.auth.login(username, password)
        return client

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _headers(self, extra: dict[str, str] | None) -> dict[str, str]:
        headers = dict(extra or {})
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        return headers

    def request(self, method: str, path: str, *, params: dict[str, Any] | None = None, json: Any = None,
                content: Any = None, headers: dict[str, str] | None = None) -> Any:
        """Call the API (`path` below /api/v1) and return the reply: parsed JSON, text, bytes (an image) or
        None (204). ApiError for an error reply, ServerUnreachable when nothing answers."""
        try:
            reply = self._http.request(method, path, params=params, json=json, content=content,
                                       headers=self._headers(headers))
        except httpx.TransportError as exc:
            raise ServerUnreachable(f"{self.url} did not answer: {exc}") from exc
        if reply.status_code >= 400:
            raise error_of(reply, method, path)
        if reply.status_code == 204 or not reply.content:
            return None
        kind = reply.headers.get("content-type", "")
        if kind.startswith("application/json"):
            return reply.json()
        if kind.startswith("text/"):
            return reply.text
        return reply.content

    def stream(self, method: str, path: str, *, headers: dict[str, str] | None = None) -> _LineStream:
        """A streamed reply, read line by line (server-sent events)."""
        return _LineStream(self, method, path, self._headers(headers))


class _LineStream:
    def __init__(self, client: Client, method: str, path: str, headers: dict[str, str]) -> None:
        self._client, self._method, self._path, self._headers = client, method, path, headers
        self._context: Any = None

    def __enter__(self) -> Iterator[str]:
        http = self._client._http
        try:
            self._context = http.stream(self._method, self._path, headers=self._headers,
                                        timeout=httpx.Timeout(http.timeout.connect, read=None))
            reply = self._context.__enter__()
        except httpx.TransportError as exc:
            raise ServerUnreachable(f"{self._client.url} did not answer: {exc}") from exc
        if reply.status_code >= 400:
            reply.read()
            error = error_of(reply, self._method, self._path)
            self._context.__exit__(None, None, None)
            raise error
        return self._lines(reply)

    def _lines(self, reply: httpx.Response) -> Iterator[str]:
        try:
            yield from reply.iter_lines()
        except httpx.TransportError as exc:
            raise ServerUnreachable(f"the stream from {self._client.url} broke: {exc}") from exc

    def __exit__(self, *exc: object) -> None:
        if self._context is not None:
            self._context.__exit__(None, None, None)


def error_of(reply: httpx.Response, method: str, path: str) -> ApiError:
    """The ApiError of an error reply: the server's `error` and `detail`, or the status and text of a reply that
    is not the API's (a proxy's page)."""
    body: dict[str, Any] = {}
    try:
        parsed = reply.json()
        if isinstance(parsed, dict):
            body = parsed
    except ValueError:
        pass
    code = str(body.get("error") or "http_error")
    detail = body.get("detail")
    if not isinstance(detail, str) or not detail:
        detail = reply.text.strip()[:500] or reply.reason_phrase or f"HTTP {reply.status_code}"
    return ApiError(reply.status_code, code, detail, method=method, path=path, body=body)
