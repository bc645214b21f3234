"""What an administrator asks of a pool: provision, resize, maintain, and the fixed assignments of a manual pool.
The one implementation behind the API routes and the web console's pages. Each takes the caller's session;
jobs are sent when the caller's transaction commits."""
from __future__ import annotations

from sqlalchemy.orm import Session

from broker import assignment, lifecycle
from core.enums import PoolType
from core.errors import Conflict, Invalid, NotFound
from event_manager.service import emit
from manager.db import get_or_404
from manager.jobs import enqueue
from manager.models import Desktop, Job, Pool, User
from manager.provisioning import placement, service


def get_pool(session: Session, pool_id: str) -> Pool:
    return get_or_404(session, Pool, pool_id, "pool")


def provision_pool(session: Session, pool_id: str, *, policy: str = "spread", actor: str) -> Job:
    """Create the pool's missing desktops (up to its size) from its name pattern, as a cancelable job."""
    pool = get_pool(session, pool_id)
    placement.get_policy(policy)
    service.resolve_version(session, template_id=pool.template_id, version_id=pool.template_version_id)
    return enqueue(session, "pools.provision", params={"pool_id": pool.id, "policy": policy}, created_by=actor,
                   target_kind="pool", target_id=pool.id, description=f"provision pool {pool.name}", total=pool.size)


def resize_pool(session: Session, pool_id: str, *, size: int, prestarted: int | None = None,
                policy: str = "spread", actor: str) -> Job:
    """Set the pool's size (and prestarted count, unchanged when None) and enqueue the job that grows or shrinks
    it. Shrinking removes free desktops first (stopped ones, then the highest names) and never takes a desktop
    from its user, so a size below the desktops users hold (or are dedicated) is refused: unassign desktops or
    wait for their users' logoff first. Prestarted desktops are topped up by a second job."""
    placement.get_policy(policy)
    pool = get_pool(session, pool_id)
    prestarted = pool.prestarted if prestarted is None else prestarted
    if size < 0 or prestarted < 0:
        raise Invalid("size and prestarted cannot be negative")
    if prestarted > size:
        raise Invalid(f"prestarted ({prestarted}) cannot exceed size ({size})")
    held = lifecycle.desktops_held_in_pool(session, pool.id)
    if size < held:
        raise Conflict(f"pool {pool.name} cannot shrink to {size}: users hold {held} of its desktops, and shrinking "
                       "removes free desktops only; unassign desktops (or wait for their users to log off) first")
    old = pool.size
    pool.size, pool.prestarted = size, prestarted
    emit(session, "pool.resized", f"{actor} resized pool {pool.name} from {old} to {size} desktops "
         f"({prestarted} prestarted)", actor=actor, pool_id=pool.id)
    job = enqueue(session, "pools.resize", params={"pool_id": pool.id, "policy": policy}, created_by=actor,
                  target_kind="pool", target_id=pool.id, description=f"resize pool {pool.name} to {size}")
    if prestarted:
        maintain_pool(session, pool.id, actor=actor, description=f"prestart desktops of pool {pool.name}")
    return job


def maintain_pool(session: Session, pool_id: str, *, actor: str, description: str = "") -> Job:
    """Expire time-based leases now and top up the prestarted desktops, as a job."""
    pool = get_pool(session, pool_id)
    return enqueue(session, "pools.maintain", params={"pool_id": pool.id}, created_by=actor, target_kind="pool",
                   target_id=pool.id, description=description or f"maintain pool {pool.name}")


def _pool_desktop(session: Session, pool_id: str, desktop_id: str) -> tuple[Pool, Desktop]:
    pool = get_pool(session, pool_id)
    desktop = session.get(Desktop, desktop_id)
    if desktop is None or desktop.pool_id != pool.id:
        raise NotFound(kind=f"desktop of pool {pool.name}", id=desktop_id)
    return pool, desktop


def assign_pool_desktop(session: Session, pool_id: str, desktop_id: str, user_id: str, *, actor: str) -> Desktop:
    """Hand a free desktop of a manual pool to a user for good (within the pool's per-user limit). Commits:
    the assignment is final when this returns."""
    pool, desktop = _pool_desktop(session, pool_id, desktop_id)
    if pool.pool_type != PoolType.MANUAL:
        raise Conflict(f"pool {pool.name} is {pool.pool_type.value}; only manual pools take fixed assignments")
    user = session.get(User, user_id)
    if user is None:
        raise Invalid(f"user_id: user {user_id} does not exist")
    with assignment.assignment_guard(session):
        # the user's row locked until the commit: two assignments to one user (a bulk assign runs several at
        # once) are counted one after the other, so neither passes the per-user limit on a stale count
        assignment.lock_user(session, user.id)
        held = assignment.desktops_held(session, user.id, pool.id)
        if len(held) >= pool.max_desktops_per_user:
            raise Conflict(f"{user.username} already holds {len(held)} desktop(s) of pool {pool.name} "
                           f"(the limit is {pool.max_desktops_per_user})")
        if not assignment.assign_to_user(session, desktop.id, user.id):
            raise Conflict(f"desktop {desktop.name} is already assigned; unassign it first")
        emit(session, "broker.assigned", f"{actor} assigned desktop {desktop.name} of pool {pool.name} to "
             f"{user.username}@{user.domain}", actor=actor, user_id=user.id, desktop_id=desktop.id, pool_id=pool.id)
        session.commit()
    return get_or_404(session, Desktop, desktop.id, "desktop", populate_existing=True)


def unassign_pool_desktop(session: Session, pool_id: str, desktop_id: str, *, actor: str) -> Desktop:
    """Take a pool desktop back from its user; it is reset to the template (a job) before anyone else gets it."""
    pool, desktop = _pool_desktop(session, pool_id, desktop_id)
    if desktop.assigned_user_id is None:
        raise Conflict(f"desktop {desktop.name} is not assigned to anyone")
    if lifecycle.unassign(session, desktop, actor=actor) is None:
        raise Conflict(f"desktop {desktop.name} is busy ({desktop.task_state}); try again shortly")
    enqueue(session, "desktops.reset", params={"desktop_id": desktop.id}, created_by=actor,
            target_kind="desktop", target_id=desktop.id, description=f"reset desktop {desktop.name} after unassign")
    return get_or_404(session, Desktop, desktop.id, "desktop", populate_existing=True)
