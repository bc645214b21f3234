"""One module per kind of object page; each declares its ObjectKind (manager.web.admin.objects)."""
from __future__ import annotations

from manager.web.admin.kinds import desktops, events, groups, hosts, jobs, pools, templates, users
from manager.web.admin.objects import object_router

KINDS = [desktops.KIND, hosts.KIND, pools.KIND, templates.KIND, users.KIND, groups.KIND, events.KIND, jobs.KIND]

router = object_router(KINDS)
router.include_router(jobs.list_router)
