"""GET /api/v1/desktops/{id}/screenshot on real parts: a desktop provisioned and started on a node agent over a
libvirt test-driver hypervisor answers with the PNG the node captured; once stopped, a 409 that says why."""
from __future__ import annotations

from tests.integration.broker import conftest as broker

# The broker tests' fixtures, used here as they are: real node agents on test-driver hypervisors and the estate
# builder (pytest finds a module's fixtures by their names in it).
API = broker.API
work_dir, node_agents, template_image, uniq, world = (broker.work_dir, broker.node_agents, broker.template_image,
                                                      broker.uniq, broker.world)
hosts_without_heartbeats = broker.hosts_without_heartbeats

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def test_a_running_desktop_shows_its_screen_and_a_stopped_one_says_it_has_none(world, client):
    world.hosts(1)
    template_id, _ = world.template()
    made = client.post(f"{API}/desktops/provision", json={"name": f"{world.prefix}-screen",
                                                          "template_id": template_id})
    assert made.status_code == 201, made.text
    desktop_id = made.json()["id"]
    started = client.post(f"{API}/desktops/{desktop_id}/start")
    assert started.status_code == 200 and started.json()["power_state"] == "up", started.text

    shot = client.get(f"{API}/desktops/{desktop_id}/screenshot")
    assert shot.status_code == 200, shot.text
    assert shot.headers["content-type"] == "image/png" and shot.content.startswith(PNG_SIGNATURE)
    assert shot.headers["cache-control"] == "no-store"

    page = client.get(f"/admin/desktops/{desktop_id}").text  # the page asks for it (same session)
    assert f'data-screenshot="/api/v1/desktops/{desktop_id}/screenshot"' in page and "data-idle" not in page

    stopped = client.post(f"{API}/desktops/{desktop_id}/poweroff")
    assert stopped.status_code == 200, stopped.text
    refused = client.get(f"{API}/desktops/{desktop_id}/screenshot")
    assert refused.status_code == 409
    assert refused.json()["detail"].endswith("is down: there is no screen to show until it runs")

    from core.enums import PowerState
    from manager import db
    from manager.models import Desktop
    with db.session_scope() as s:  # the manager's record is behind: the node knows better
        s.get(Desktop, desktop_id).power_state = PowerState.UP
    behind = client.get(f"{API}/desktops/{desktop_id}/screenshot")
    assert behind.status_code == 409 and "is not running on host" in behind.json()["detail"], behind.text
