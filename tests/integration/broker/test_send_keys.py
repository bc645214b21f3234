"""Send Ctrl+Alt+Del to a real guest (QEMU under the machine's libvirtd, the demo desktop image, a node agent
process), by its user through /me and by an administrator: the demo guest's init leaves Ctrl+Alt+Del to the kernel,
which restarts the machine, so the guest boots again (its boot counter goes up); every sending is an event; unknown
keys, a stopped desktop, someone else's desktop and a caller without desktops:console are refused."""
from __future__ import annotations

import time

import pytest
from sqlalchemy import select

from tests.integration.broker.conftest import API, bearer
from tests.integration.broker.test_real_guests import (  # noqa: F401  (module fixtures)
    connect, guest, published_image, real_node, setup_pool, wait_guest_ready)

pytestmark = [pytest.mark.libvirt, pytest.mark.slow]
CAD = {"keys": ["ctrl", "alt", "delete"]}
BOOTS = "read /var/lib/vdi/boot-count"


def _boots(agent, desktop_id: str) -> int:
    return int(guest(agent, desktop_id, BOOTS).removesuffix("\\n"))


def test_ctrl_alt_del_reboots_a_real_guest(real_node, published_image, world, anon_client, client):
    from manager import db
    from manager.models import Event

    ann, ann_token = world.user("keys-ann")
    _, ben_token = world.user("keys-ben")
    _, helpdesk_token = world.user("keys-helpdesk", roles=("HelpDesk",))
    pool_id = setup_pool(real_node, published_image, "manual")
    world.entitle(pool_id=pool_id, user_id=ann)
    desktop_id = connect(anon_client, ann_token, pool_id)["desktop_id"]
    wait_guest_ready(real_node, desktop_id)
    assert guest(real_node, desktop_id, "sync") == "ok"  # the boot counter is on disk before the hard restart
    boots = _boots(real_node, desktop_id)

    mine = f"{API}/me/desktops/{desktop_id}/send-keys"
    bad = anon_client.post(mine, json={"keys": ["ctrl", "alt", "del", "win"]}, headers=bearer(ann_token))
    assert bad.status_code == 422 and "'del', 'win'" in bad.json()["detail"], bad.text
    assert anon_client.post(mine, json=CAD, headers=bearer(ben_token)).status_code == 404  # not ben's
    admin_route = f"{API}/desktops/{desktop_id}/send-keys"
    assert anon_client.post(admin_route, json=CAD, headers=bearer(ann_token)).status_code == 403
    # HelpDesk may: ctrl+alt+f1 shows tty1, the screen the guest already shows
    helpdesk = anon_client.post(admin_route, json={"keys": ["ctrl", "alt", "f1"]}, headers=bearer(helpdesk_token))
    assert helpdesk.status_code == 200 and helpdesk.json() == {"desktop_id": desktop_id,
                                                                "keys": ["ctrl", "alt", "f1"]}, helpdesk.text
    assert _boots(real_node, desktop_id) == boots  # that did not restart it

    sent = anon_client.post(mine, json=CAD, headers=bearer(ann_token))
    assert sent.status_code == 200, sent.text
    deadline, now_boots = time.monotonic() + 300, boots
    while now_boots == boots:
        assert time.monotonic() < deadline, "Ctrl+Alt+Del did not restart the guest"
        time.sleep(3)
        try:
            now_boots = _boots(real_node, desktop_id)
        except Exception:  # the guest agent does not answer while the guest boots again
            pass
    assert now_boots == boots + 1

    with db.session_scope() as s:
        messages = list(s.scalars(select(Event.message).where(Event.code == "desktop.keys_sent",
                                                              Event.desktop_id == desktop_id).order_by(Event.id)))
    name = client.get(f"{API}/desktops/{desktop_id}").json()["name"]
    assert messages == [f"keys-helpdesk@local sent ctrl+alt+f1 to desktop {name}",
                        f"keys-ann@local sent ctrl+alt+delete to desktop {name}"]

    assert client.post(f"{API}/desktops/{desktop_id}/poweroff").status_code == 200
    stopped = client.post(admin_route, json=CAD)
    assert stopped.status_code == 409 and "no keyboard to press until it runs" in stopped.json()["detail"]
