"""Acceptance on real guests (QEMU under the machine's libvirtd, the demo desktop image, a node agent process):
- automatic pool: a user connects over SPICE, writes a file in the guest, logs off; the next user gets a clean
  desktop (the file is gone: the overlay was reset to the template);
- manual pool: the same user finds the file again, even after the desktop was powered off and started;
- time-based pool: the lease expires, the desktop is reclaimed and its overlay is fresh again;
- tickets: each connect sets a new SPICE password on the running domain with passwdValidTo = its expiry
  (read back from the live XML), and the password is never written to the event log or the logs.
At most one guest runs at a time."""
from __future__ import annotations

import datetime as dt
import logging
import os
import re
import shutil
import signal
import subprocess
import time
import uuid
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from sqlalchemy import select

from hypervisor_node.driver import LibvirtDriver
from manager.embedded_nodes import EmbeddedNode, NodeAgentProcess, free_port
from tests.harness.guests import remove_owned_domains
from tests.harness.rfb import vnc_password_accepted
from tests.integration.broker.conftest import API, bearer, wait_for_jobs

pytestmark = [pytest.mark.libvirt, pytest.mark.slow]
SYSTEM_URI = "qemu:///system"
SHARED_ROOT = Path(os.environ.get("VDI_TEST_SHARED_DIR", "/var/tmp/vdi-broker-tests"))
SPICE = {"protocols": ["spice"], "address": "127.0.0.1"}


def virsh(*args: str) -> str:
    return subprocess.run(["virsh", "-c", SYSTEM_URI, *args], capture_output=True, text=True, check=True,
                          timeout=60).stdout


@pytest.fixture(scope="module")
def real_node() -> NodeAgentProcess:
    """A node agent on the real libvirtd, seeing only the domains it defines (its own manager id)."""
    from manager.provisioning import nodes

    if not shutil.which("virsh") or subprocess.run(["virsh", "-c", SYSTEM_URI, "version"], capture_output=True,
                                                   timeout=30).returncode != 0:
        pytest.skip("qemu:///system does not answer: run bash scripts/services.sh libvirtd (docs/hypervisors.md)")
    SHARED_ROOT.mkdir(parents=True, exist_ok=True)
    os.chmod(SHARED_ROOT, 0o755)
    work = SHARED_ROOT / f"run-{os.getpid()}-{uuid.uuid4().hex[:6]}"
    work.mkdir()
    os.chmod(work, 0o755)
    manager_id = f"broker-tests-{uuid.uuid4().hex[:8]}"
    # nested KVM cannot run these guests here (docs/hypervisors.md): TCG
    node = EmbeddedNode(name="real1", libvirt_uri=SYSTEM_URI, port=free_port(), token=f"tok-{uuid.uuid4().hex}",
                        domain_types=os.environ.get("VDI_NODE_DOMAIN_TYPES", "qemu"))
    agent = NodeAgentProcess(node, manager_url=None, log_path=work / "agent.log", manager_id=manager_id)
    try:  # the first libvirt call can be slow on a busy machine
        agent.start(timeout=180, request_timeout=60)
    except RuntimeError:
        text = agent.log_path.read_text()[-2000:]
        shutil.rmtree(work, ignore_errors=True)
        pytest.fail(f"the node agent did not start: {text}")
    agent.work = work  # type: ignore[attr-defined]
    # The machine's libvirtd is shared and can be slow (seconds to a minute per call under load).
    saved_timeout, nodes.NODE_TIMEOUT_S = nodes.NODE_TIMEOUT_S, 300.0
    try:
        yield agent
    finally:
        # The agent stops first, so no job still running in this process can define a domain through it
        # after the clean-up; the domains are then removed straight through libvirt under the agent's
        # manager id (HTTP calls to an agent that is slow or dead after a failed test left them behind).
        agent.stop()
        driver = LibvirtDriver(SYSTEM_URI, manager_id=manager_id)
        try:
            remove_owned_domains(driver)
        finally:
            driver.close()
            shutil.rmtree(work, ignore_errors=True)
            nodes.NODE_TIMEOUT_S = saved_timeout


@pytest.fixture(scope="module")
def published_image(real_node):
    from image_manager.demo_image import ensure_demo_image

    return ensure_demo_image().publish(real_node.work / "templates")


def real_template(real_node, image, host_name: str = "real1") -> tuple[str, str]:
    """(host id, template id): the real host (`real_node`, known to the manager as `host_name`, made once) and a new
    template booting the demo image."""
    from core.enums import HostStatus, OsType
    from manager import db
    from manager.models import Cluster, Host, Template, TemplateVersion, Volume

    tag = uuid.uuid4().hex[:6]
    with db.session_scope() as s:
        host = s.scalar(select(Host).where(Host.name == host_name))
        if host is None:
            cluster = Cluster(name=f"real-{tag}")
            s.add(cluster)
            s.flush()
            host = Host(name=host_name, cluster_id=cluster.id, agent_url=real_node.node.url,
                        agent_token=real_node.node.token,
                        address="127.0.0.1", status=HostStatus.UP, memory_mib=8192, free_memory_mib=4096)
            s.add(host)
            s.flush()
        volume = s.scalar(select(Volume).where(Volume.path == str(image.template)))
        if volume is None:
            volume = Volume(path=str(image.template), role="template", virtual_size=64 << 20)
            s.add(volume)
            s.flush()
        tpl = Template(name=f"demo-{tag}", os_type=OsType.OTHER_LINUX, memory_mib=256, boot_kernel=str(image.kernel),
                       boot_initrd=str(image.initrd), boot_cmdline=image.cmdline())
        s.add(tpl)
        s.flush()
        version = TemplateVersion(template_id=tpl.id, number=1, volume_id=volume.id)
        s.add(version)
        s.flush()
        tpl.latest_version_id = version.id
        return host.id, tpl.id


def setup_pool(real_node, image, pool_type: str, host_name: str = "real1", **fields) -> str:
    """A one-desktop pool on the real host (`real_node`, known to the manager as `host_name`), provisioned through
    the manager's own code."""
    from core.enums import PoolType
    from manager import db
    from manager.models import Pool
    from manager.provisioning.tasks import grow_pool

    _host_id, template_id = real_template(real_node, image, host_name)
    tag = uuid.uuid4().hex[:6]
    with db.session_scope() as s:
        pool = Pool(name=f"{pool_type}-{tag}", pool_type=PoolType(pool_type), template_id=template_id, size=1,
                    name_pattern=f"{pool_type[:4]}{tag}-##", memory_mib=256, **fields)
        s.add(pool)
        s.flush()
        pool_id = pool.id
    assert grow_pool(None, pool_id, 1)["created"] == 1
    return pool_id


def guest(agent: NodeAgentProcess, desktop_id: str, command: str, timeout: float = 10.0) -> str:
    from manager.nodes.client import NodeClient

    with NodeClient(agent.node.url, agent.node.token, timeout=timeout + 5) as client:
        return client.guest(desktop_id, command, timeout=timeout)


def wait_guest_ready(agent: NodeAgentProcess, desktop_id: str, timeout: float = 240.0) -> None:
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        try:
            last = guest(agent, desktop_id, "ping", timeout=5)
            if last == "pong":
                return
        except Exception as exc:  # the agent is not up yet (no reply, socket not ready): keep asking
            last = str(exc)
        time.sleep(2)
    raise AssertionError(f"the guest agent of {desktop_id} did not answer within {timeout} s: {last}")


def live_graphics(desktop_id: str) -> dict[str, dict[str, str]]:
    xml = ET.fromstring(virsh("dumpxml", "--security-info", desktop_id))
    return {g.get("type"): dict(g.attrib) for g in xml.findall("devices/graphics")}


def connect(client, token, pool_id):
    r = client.post(f"{API}/broker/connect", json={"pool_id": pool_id, "client": SPICE}, headers=bearer(token))
    assert r.status_code == 200, r.text
    return r.json()


def logoff(client, token, session_id):
    r = client.post(f"{API}/broker/logoff", json={"session_id": session_id}, headers=bearer(token))
    assert r.status_code == 200, r.text


def test_pools_on_real_guests(real_node, published_image, world, anon_client, client, caplog):
    from image_manager import qcow2
    from manager import db
    from manager.models import Desktop, Event, Volume

    caplog.set_level(logging.DEBUG)
    ann, ann_token = world.user("ann")
    ben, ben_token = world.user("ben")

    # ---- automatic: ann writes a file, logs off; ben gets the same desktop, clean --------------------------------
    auto = setup_pool(real_node, published_image, "automatic")
    for user in (ann, ben):
        world.entitle(pool_id=auto, user_id=user)
    first = connect(anon_client, ann_token, auto)
    desktop_id = first["desktop_id"]
    console = first["console"]
    assert first["protocol"] == "spice" and console["port"] and console["password"]
    vv = first["file"]["content"]
    assert f"port={console['port']}" in vv and f"password={console['password']}" in vv
    spice = live_graphics(desktop_id)["spice"]
    assert spice["passwd"] == console["password"]  # the ticket is set on the running guest
    expires = dt.datetime.fromisoformat(console["expires_at"])
    assert spice["passwdValidTo"] == expires.strftime("%Y-%m-%dT%H:%M:%S")
    assert dt.timedelta(seconds=100) < expires - dt.datetime.now(dt.timezone.utc) <= dt.timedelta(seconds=121)
    assert live_graphics(desktop_id)["vnc"]["passwd"] == console["password"][:8]

    wait_guest_ready(real_node, desktop_id)
    assert guest(real_node, desktop_id, "write /home/user/notes.txt written by ann").startswith("ok")
    assert guest(real_node, desktop_id, "read /home/user/notes.txt") == "written by ann"
    logoff(anon_client, ann_token, first["session_id"])
    wait_for_jobs(180)
    with db.session_scope() as s:
        d = s.get(Desktop, desktop_id)
        assert d.assigned_user_id is None and d.task_state is None and d.power_state.value == "down"
        disk = s.get(Volume, d.volume_id).path
    assert qcow2.is_empty(disk)  # a fresh overlay: ann's changes are gone

    second = connect(anon_client, ben_token, auto)
    assert second["desktop_id"] == desktop_id
    assert second["console"]["password"] != console["password"]  # a new ticket for a new connect
    assert live_graphics(desktop_id)["spice"]["passwd"] == second["console"]["password"]
    wait_guest_ready(real_node, desktop_id)
    assert guest(real_node, desktop_id, "read /home/user/notes.txt").startswith("ERR no such file")
    logoff(anon_client, ben_token, second["session_id"])
    wait_for_jobs(180)

    # ---- manual: the same user keeps the file, across a power cycle ------------------------------------------------
    manual = setup_pool(real_node, published_image, "manual")
    world.entitle(pool_id=manual, user_id=ann)
    mine = connect(anon_client, ann_token, manual)
    wait_guest_ready(real_node, mine["desktop_id"])
    assert guest(real_node, mine["desktop_id"], "write /home/user/keep.txt still here").startswith("ok")
    logoff(anon_client, ann_token, mine["session_id"])
    wait_for_jobs(60)
    off = client.post(f"{API}/desktops/{mine['desktop_id']}/poweroff")
    assert off.status_code == 200 and off.json()["power_state"] == "down"
    again = connect(anon_client, ann_token, manual)  # starts it again
    assert again["desktop_id"] == mine["desktop_id"] and again["assignment"] == "existing"
    wait_guest_ready(real_node, mine["desktop_id"])
    assert guest(real_node, mine["desktop_id"], "read /home/user/keep.txt") == "still here"
    client.post(f"{API}/desktops/{mine['desktop_id']}/poweroff")

    # ---- time-based: the lease expires, the desktop is reclaimed and reset ---------------------------------------------
    timed = setup_pool(real_node, published_image, "time_based", lease_seconds=3600)
    world.entitle(pool_id=timed, user_id=ben)
    lease = connect(anon_client, ben_token, timed)
    wait_guest_ready(real_node, lease["desktop_id"])
    assert guest(real_node, lease["desktop_id"], "write /home/user/lease.txt mine for now").startswith("ok")
    with db.session_scope() as s:
        s.get(Desktop, lease["desktop_id"]).lease_until = dt.datetime.now(dt.timezone.utc)
    assert client.post(f"{API}/pools/{timed}/maintain").status_code == 202
    wait_for_jobs(180)
    with db.session_scope() as s:
        d = s.get(Desktop, lease["desktop_id"])
        assert d.assigned_user_id is None and d.power_state.value == "down" and d.task_state is None
        assert qcow2.is_empty(s.get(Volume, d.volume_id).path)
        expired = s.scalars(select(Event).where(Event.code == "desktop.lease_expired")).all()
        assert [e.user_id for e in expired] == [ben]
        # no ticket password ever reached the event log
        messages = " ".join(s.scalars(select(Event.message)))
    for password in (console["password"], second["console"]["password"], again["console"]["password"]):
        assert password not in messages
        assert password not in caplog.text


def test_a_ticket_works_only_before_its_expiry(real_node, published_image, world, anon_client, monkeypatch):
    """A 5-second ticket: the live XML carries passwdValidTo 5 s ahead; QEMU's display accepts the password
    before that and refuses the very same password after it; a fresh console file sets a new, working one."""
    from manager.config import get_settings

    if not shutil.which("openssl"):
        pytest.skip("openssl is needed to compute the VNC authentication response")
    monkeypatch.setattr(get_settings(), "ticket_seconds", 5)
    pool_id = setup_pool(real_node, published_image, "automatic")
    user, token = world.user("tina")
    world.entitle(pool_id=pool_id, user_id=user)
    got = connect(anon_client, token, pool_id)
    live = live_graphics(got["desktop_id"])
    valid_to = dt.datetime.strptime(live["spice"]["passwdValidTo"], "%Y-%m-%dT%H:%M:%S").replace(
        tzinfo=dt.timezone.utc)
    now = dt.datetime.now(dt.timezone.utc)
    assert now < valid_to <= now + dt.timedelta(seconds=6)
    assert dt.datetime.fromisoformat(got["console"]["expires_at"]) == valid_to
    vnc_port = int(live["vnc"]["port"])
    password = got["console"]["password"]
    assert vnc_password_accepted(vnc_port, password)
    assert not vnc_password_accepted(vnc_port, "wrong-pw")
    time.sleep(max(0.0, (valid_to - dt.datetime.now(dt.timezone.utc)).total_seconds()) + 2)
    assert not vnc_password_accepted(vnc_port, password)  # expired: the same ticket opens nothing
    renewed = anon_client.get(f"{API}/broker/sessions/{got['session_id']}/console-file", headers=bearer(token))
    assert renewed.status_code == 200
    new_password = re.search(r"^password=(.+)$", renewed.text, re.M).group(1)
    assert live_graphics(got["desktop_id"])["spice"]["passwd"] == new_password != password
    assert vnc_password_accepted(vnc_port, new_password)
    anon_client.post(f"{API}/broker/logoff", json={"session_id": got["session_id"]}, headers=bearer(token))
    wait_for_jobs(120)


def wait_session_state(session_id: str, state: str, timeout: float = 90.0) -> None:
    from manager import db
    from manager.models import DesktopSession

    deadline = time.monotonic() + timeout
    while True:
        with db.session_scope() as s:
            now = s.get(DesktopSession, session_id).state.value
        if now == state:
            return
        if time.monotonic() >= deadline:
            raise AssertionError(f"session {session_id} is {now}, not {state}, after {timeout} s")
        time.sleep(0.5)


def test_a_session_follows_a_real_console_client(real_node, published_image, world, anon_client, client,
                                                 api_server):
    """A node agent reporting to a real manager process: the user's SPICE connect leaves the session pending;
    remote-viewer opening the .vv makes it connected and its exit disconnected; a VNC client that authenticates with
    the ticket makes it connected (libvirt's graphics events, through the agent's console events), closing it makes
    it disconnected. A fresh console file makes it pending again; powering the desktop off under an attached client
    makes it disconnected. The pool's disconnect policy (reset) waits for its delay (60 min: nothing happens), and
    with a delay of 0 the next maintenance pass resets the desktop to a fresh overlay and gives it back to the
    pool."""
    from image_manager import qcow2
    from manager import db
    from manager.models import Desktop, DesktopSession, Pool, Volume
    from manager.provisioning.tasks import maintain_pools
    from tests.harness.rfb import VncRefused, vnc_client

    manager_id = f"console-tests-{uuid.uuid4().hex[:8]}"
    node = EmbeddedNode(name="realw", libvirt_uri=SYSTEM_URI, port=free_port(), token=f"tok-{uuid.uuid4().hex}",
                        domain_types=os.environ.get("VDI_NODE_DOMAIN_TYPES", "qemu"))
    agent = NodeAgentProcess(node, manager_url=api_server.url, log_path=real_node.work / "realw.log",
                             manager_id=manager_id, log_level="INFO")
    agent.start(timeout=180, request_timeout=60)
    try:
        pool_id = setup_pool(agent, published_image, "automatic", host_name="realw", disconnect_action="reset",
                             disconnect_after_minutes=60)
        user, token = world.user("vera")
        world.entitle(pool_id=pool_id, user_id=user)
        got = connect(anon_client, token, pool_id)
        sid, desktop_id = got["session_id"], got["desktop_id"]
        with db.session_scope() as s:
            assert s.get(DesktopSession, sid).state.value == "pending"  # a ticket, no client yet
        # SPICE: Debian's remote-viewer under Xvfb opens the .vv exactly as the connect returned it; its several
        # channels make one attach, and its exit one detach
        if not (shutil.which("remote-viewer") and shutil.which("xvfb-run")):
            pytest.fail("remote-viewer (virt-viewer) and xvfb-run (xvfb) are needed: apt-get install virt-viewer xvfb")
        vv = real_node.work / f"{desktop_id}.vv"
        vv.write_text(got["file"]["content"])
        with open(real_node.work / "remote-viewer.log", "wb") as log:
            viewer = subprocess.Popen(["xvfb-run", "-a", "remote-viewer", str(vv)], stdout=log,
                                      stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
        try:
            wait_session_state(sid, "connected")
        finally:
            os.killpg(viewer.pid, signal.SIGTERM)
            viewer.wait(30)
        wait_session_state(sid, "disconnected")
        vnc_port = int(live_graphics(desktop_id)["vnc"]["port"])
        with pytest.raises(VncRefused):  # a wrong password attaches nothing
            with vnc_client(vnc_port, "wrong-pw"):
                pass
        with vnc_client(vnc_port, got["console"]["password"]) as (width, height):
            assert width > 0 and height > 0
            wait_session_state(sid, "connected")
        wait_session_state(sid, "disconnected")
        with db.session_scope() as s:
            row = s.get(DesktopSession, sid)
            assert row.connected_at is not None and row.disconnected_at >= row.connected_at

        assert maintain_pools()["disconnect_policy"] == 0  # 60 minutes are not over
        with db.session_scope() as s:
            assert s.get(DesktopSession, sid).state.value == "disconnected"

        # she comes back: a fresh console file waits for her client (pending), which attaches with the new ticket
        renewed = anon_client.get(f"{API}/broker/sessions/{sid}/console-file", headers=bearer(token))
        assert renewed.status_code == 200
        wait_session_state(sid, "pending", timeout=0)
        password = re.search(r"^password=(.+)$", renewed.text, re.M).group(1)
        with vnc_client(vnc_port, password):
            wait_session_state(sid, "connected")
            # the desktop is powered off under her: QEMU says nothing of its clients, the stop ends them
            assert client.post(f"{API}/desktops/{desktop_id}/poweroff").status_code == 200
            wait_session_state(sid, "disconnected")
        with db.session_scope() as s:
            s.get(Pool, pool_id).disconnect_after_minutes = 0
        assert maintain_pools()["disconnect_policy"] == 1
        wait_for_jobs(240)
        with db.session_scope() as s:
            assert s.get(DesktopSession, sid).state.value == "ended"
            d = s.get(Desktop, desktop_id)
            assert d.assigned_user_id is None and d.task_state is None and d.power_state.value == "down"
            assert qcow2.is_empty(s.get(Volume, d.volume_id).path)  # reset: a fresh overlay
        assert "console client attached" in agent.log_path.read_text()
    finally:
        agent.stop()
        driver = LibvirtDriver(SYSTEM_URI, manager_id=manager_id)
        try:
            remove_owned_domains(driver)
        finally:
            driver.close()


def test_revoking_a_user_cuts_their_native_console_on_a_desktop_they_keep(real_node, published_image, world,
                                                                         anon_client, client):
    """A dedicated desktop is not released when its user is disabled, so it keeps running: the VNC client attached
    with the ticket the broker handed out is disconnected by the server (a desktops.cut_consoles job: a new unknown
    password, the display taken exclusively), and the old ticket opens nothing any more."""
    import socket

    from core.vnc import authenticate, read_exactly
    from manager import db
    from manager.models import Assignment, Desktop, Job

    pool_id = setup_pool(real_node, published_image, "manual")
    user, token = world.user("rhea")
    with db.session_scope() as s:  # the pool's desktop made a dedicated one: out of the pool, assigned to her
        desktop = s.scalar(select(Desktop).where(Desktop.pool_id == pool_id))
        desktop.pool_id, desktop_id = None, desktop.id
        s.add(Assignment(desktop_id=desktop_id, user_id=user, kind="dedicated"))
    r = anon_client.post(f"{API}/broker/connect", json={"desktop_id": desktop_id, "client": SPICE},
                         headers=bearer(token))
    assert r.status_code == 200, r.text
    password = r.json()["console"]["password"]
    vnc_port = int(live_graphics(desktop_id)["vnc"]["port"])
    with socket.create_connection(("127.0.0.1", vnc_port), timeout=60) as sock:
        authenticate(sock, password)
        sock.sendall(b"\x01")  # ClientInit: shared
        read_exactly(sock, 20)  # ServerInit's size and pixel format; the name's length and the name follow
        assert client.patch(f"{API}/users/{user}", json={"enabled": False}).status_code == 200
        wait_for_jobs(180)
        with db.session_scope() as s:
            job = s.scalar(select(Job).where(Job.kind == "desktops.cut_consoles", Job.target_id == desktop_id))
            assert job is not None and job.state.value == "succeeded", job and (job.state, job.error)
            assert s.get(Desktop, desktop_id).power_state.value == "up"  # kept, not reset
        sock.settimeout(30)
        rest = b""
        while chunk := sock.recv(65536):  # the rest of ServerInit, then the server's close
            rest += chunk
        assert len(rest) < 4096  # closed, not streaming a framebuffer nobody asked for
    assert not vnc_password_accepted(vnc_port, password)
