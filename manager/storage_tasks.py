"""Storage accounting job: measure every volume file and every storage domain's free space."""
from __future__ import annotations

import os
import shutil
from typing import Any

from sqlalchemy import select

from manager import db
from manager.jobs import JobContext, OnCrash, task
from manager.models import StorageDomain, Volume


def allocated_bytes(path: str) -> int | None:
    """Bytes actually allocated on disk (sparse files count only what they use); None if the file is gone."""
    try:
        return os.stat(path).st_blocks * 512
    except FileNotFoundError:
        return None


@task("storage.refresh", on_crash=OnCrash.RESUME)
def refresh_storage(ctx: JobContext, storage_domain_id: str | None = None) -> dict[str, Any]:
    """Re-measure volumes' actual sizes and domains' capacity. Idempotent; reports missing files."""
    with db.session_scope() as session:
        stmt = select(Volume.id, Volume.path)
        if storage_domain_id:
            stmt = stmt.where(Volume.storage_domain_id == storage_domain_id)
        volumes = list(session.execute(stmt))
        domains = list(session.scalars(select(StorageDomain)))
    total = len(volumes) + len(domains)
    ctx.progress(0, total, force=True)
    missing: list[str] = []
    done = 0
    for batch_start in range(0, len(volumes), 200):
        batch = volumes[batch_start:batch_start + 200]
        with db.session_scope() as session:
            for vol_id, path in batch:
                size = allocated_bytes(path)
                if size is None:
                    missing.append(path)
                    continue
                vol = session.get(Volume, vol_id)
                if vol is not None:
                    vol.actual_size = size
        done += len(batch)
        ctx.completed.update(volumes_measured=done, missing=list(missing))
        ctx.progress(done, total)
        ctx.check_cancelled()
    with db.session_scope() as session:
        for dom in session.scalars(select(StorageDomain)):
            if os.path.isdir(dom.path):
                usage = shutil.disk_usage(dom.path)
                dom.total_bytes, dom.free_bytes, dom.used_bytes = usage.total, usage.free, usage.used
            done += 1
            ctx.progress(done, total)
    return {"volumes": len(volumes), "domains": len(domains), "missing": missing}
