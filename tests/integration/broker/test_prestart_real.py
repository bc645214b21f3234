"""Prestarted desktops on real guests (QEMU TCG under the machine's libvirtd, the demo image, a node agent): an
automatic pool of 3 with prestarted=1 keeps one free desktop running and ready (its guest agent answers) as users
take them; a user's connect gets the running one, and the maintenance pass starts the next. At most two guests run
at a time. Run under flock /tmp/vdi-heavy.lock."""
from __future__ import annotations

import pytest
from sqlalchemy import select

from tests.integration.broker.test_real_guests import (connect, logoff, published_image, real_node,  # noqa: F401
                                                       setup_pool, wait_guest_ready)
from tests.integration.broker.conftest import wait_for_jobs

pytestmark = [pytest.mark.libvirt, pytest.mark.slow]


def free_desktops(pool_id: str) -> dict[str, str]:
    """The pool's free desktops: id -> power state."""
    from manager import db
    from manager.models import Desktop

    with db.session_scope() as s:
        return {d.id: d.power_state.value for d in s.scalars(select(Desktop).where(
            Desktop.pool_id == pool_id, Desktop.assigned_user_id.is_(None)))}


def running_free(pool_id: str) -> list[str]:
    return sorted(i for i, state in free_desktops(pool_id).items() if state == "up")


def test_a_prestarted_pool_keeps_one_desktop_running_as_users_take_them(real_node, published_image,  # noqa: F811
                                                                         world, anon_client, client):
    from manager import db
    from manager.models import Desktop, Pool
    from manager.provisioning.tasks import grow_pool, maintain_pools

    pool_id = setup_pool(real_node, published_image, "automatic")
    with db.session_scope() as s:
        pool = s.get(Pool, pool_id)
        pool.size, pool.prestarted = 3, 1
    assert grow_pool(None, pool_id, 2)["created"] == 2
    assert running_free(pool_id) == []  # provisioned, all down
    ann, ann_token = world.user("ann")
    bob, bob_token = world.user("bob")
    world.entitle(pool_id=pool_id, user_id=ann)
    world.entitle(pool_id=pool_id, user_id=bob)

    # the maintenance pass starts one free desktop, and its guest comes up
    assert maintain_pools(pool_id)["prestarted"] == 1
    (first,) = running_free(pool_id)
    wait_guest_ready(real_node, first)
    assert maintain_pools(pool_id)["prestarted"] == 0  # one is enough

    # ann takes the running one; the next pass starts another, ready for the next user
    got = connect(anon_client, ann_token, pool_id)
    assert got["desktop_id"] == first
    assert running_free(pool_id) == []
    assert maintain_pools(pool_id)["prestarted"] == 1
    (second,) = running_free(pool_id)
    assert second != first
    wait_guest_ready(real_node, second)

    # ann leaves: her desktop is reset (powered off, a fresh overlay); one free desktop still runs, none more starts
    logoff(anon_client, ann_token, got["session_id"])
    wait_for_jobs(timeout=300)
    assert free_desktops(pool_id)[first] == "down"
    assert running_free(pool_id) == [second]

    # bob gets the running one, and the pass starts one of the two stopped ones
    got = connect(anon_client, bob_token, pool_id)
    assert got["desktop_id"] == second
    assert maintain_pools(pool_id)["prestarted"] == 1
    (third,) = running_free(pool_id)
    assert third != second
    wait_guest_ready(real_node, third)
    with db.session_scope() as s:
        up = s.scalars(select(Desktop.id).where(Desktop.pool_id == pool_id, Desktop.power_state == "up")).all()
    assert sorted(up) == sorted([second, third])  # bob's and the prestarted one: never more
