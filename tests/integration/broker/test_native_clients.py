"""Native clients from another machine (issue 21 item 3), with Debian's own clients:
- remote-viewer (virt-viewer 11) under Xvfb, in a network namespace on the hosts' network that cannot reach this
  machine's 127.0.0.1, opens the .vv exactly as the broker returns it (the host's display address set through the
  API) and shows the guest's screen: its screenshot matches the node's screenshot of the guest;
- the same through the SPICE proxy (`vdi spice-proxy`, VDI_SPICE_PROXY): the proxy's log shows the tunnel;
- FreeRDP's xfreerdp opens the .rdp a connect returns and reaches the address the guest reported.
One real guest (the demo desktop under the machine's libvirtd, TCG) for the module. Screenshots are kept in
VDI_NATIVE_SCREENSHOTS (default /tmp/vdi-native-clients)."""
from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from sqlalchemy import select

from tests.harness.hosts import HostCluster
from tests.integration.broker.conftest import API, bearer, wait_for_jobs
from tests.integration.broker.test_real_guests import (connect, published_image, real_node,  # noqa: F401
                                                       setup_pool, wait_guest_ready)

pytestmark = [pytest.mark.libvirt, pytest.mark.slow]
TOOLS = ("remote-viewer", "Xvfb", "import", "convert", "xfreerdp", "ip")
SHOTS = Path(os.environ.get("VDI_NATIVE_SCREENSHOTS", "/tmp/vdi-native-clients"))
SCREEN = (1280, 1024)
# Where the node's screenshot of the guest best fits on the viewer's screen (grey levels, 0-255): a pixel differs
# when its grey level is more than INK_CONTRAST off; the screen shows the guest when at most these shares of the
# guest's drawn pixels (text: the blinking cursor, a clock may change between the two screenshots) and of its
# background differ.
INK_CONTRAST = 48
INK_TOLERANCE = 0.1
BACKGROUND_TOLERANCE = 0.02


@pytest.fixture(scope="module")
def network():
    """The hosts' network: a bridge with an address on this machine (where the guests' displays will listen) and a
    client namespace on it (the user's machine)."""
    missing = [tool for tool in TOOLS if shutil.which(tool) is None]
    if missing:
        pytest.fail(f"missing {missing}: the Makefile's TEST_PACKAGES install them (virt-viewer, xvfb, imagemagick, "
                    "freerdp2-x11)")
    cluster = HostCluster(agents=False)
    try:
        yield cluster
    finally:
        cluster.close()


class XScreen:
    """Xvfb and X clients inside one network namespace (the user's machine)."""

    def __init__(self, netns: str, home: Path) -> None:
        self.netns, self.home = netns, home
        self.number = next(n for n in range(60, 160) if not Path(f"/tmp/.X11-unix/X{n}").exists()
                           and not Path(f"/tmp/.X{n}-lock").exists())
        self.processes: list[subprocess.Popen] = []

    def __enter__(self) -> "XScreen":
        self.home.mkdir(parents=True, exist_ok=True)
        self.start(["Xvfb", f":{self.number}", "-screen", "0", f"{SCREEN[0]}x{SCREEN[1]}x24", "-nolisten", "tcp"],
                   self.home / "xvfb.log")
        deadline = time.monotonic() + 30
        while not Path(f"/tmp/.X11-unix/X{self.number}").exists():
            assert time.monotonic() < deadline, f"Xvfb did not start: {(self.home / 'xvfb.log').read_text()}"
            time.sleep(0.1)
        return self

    def __exit__(self, *exc: object) -> None:
        for process in reversed(self.processes):
            stop(process)

    def start(self, argv: list[str], log: Path) -> subprocess.Popen:
        """A program in the namespace on this screen (`ip netns exec` execs it: the PID is the program's)."""
        env = {"PATH": os.environ["PATH"], "HOME": str(self.home), "DISPLAY": f":{self.number}",
               "XDG_RUNTIME_DIR": str(self.home), "NO_AT_BRIDGE": "1", "LANG": "C.UTF-8"}
        with open(log, "wb") as out:  # this run's output only: the folder outlives the test
            process = subprocess.Popen(["ip", "netns", "exec", self.netns, *argv], stdout=out, stderr=out,
                                       stdin=subprocess.DEVNULL, env=env)
        self.processes.append(process)
        return process

    def screenshot(self, path: Path) -> Path:
        subprocess.run(["ip", "netns", "exec", self.netns, "import", "-display", f":{self.number}", "-window",
                        "root", str(path)], check=True, capture_output=True, timeout=60)
        return path


def stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)


def grey(path: Path, scale: str = "25%") -> tuple[int, int, bytes]:
    """(width, height, 8-bit grey pixels) of an image reduced by `scale`, through ImageMagick."""
    size = subprocess.run(["convert", str(path), "-scale", scale, "-format", "%w %h", "info:"], check=True,
                          capture_output=True, text=True, timeout=60).stdout.split()
    pixels = subprocess.run(["convert", str(path), "-scale", scale, "-colorspace", "Gray", "-depth", "8", "gray:-"],
                            check=True, capture_output=True, timeout=60).stdout
    return int(size[0]), int(size[1]), pixels


def best_fit(screen: Path, guest: Path) -> tuple[int, int]:
    """Where the guest's picture best fits on the screen at 1:1 scale: searched at 1/4 size over a grid of samples
    of the guest picture."""
    sw, sh, spx = grey(screen)
    gw, gh, gpx = grey(guest)
    assert gw <= sw and gh <= sh, f"the guest's screen ({gw * 4}x{gh * 4}) is larger than the viewer's"
    samples = [(x, y) for y in range(0, gh, max(1, gh // 24)) for x in range(0, gw, max(1, gw // 32))]
    best, where = float("inf"), (0, 0)
    for dy in range(sh - gh + 1):
        for dx in range(sw - gw + 1):
            diff = 0
            for x, y in samples:
                diff += abs(spx[(dy + y) * sw + dx + x] - gpx[y * gw + x])
                if diff >= best:
                    break
            else:
                best, where = diff, (dx * 4, dy * 4)
    return where


def mismatch(screen: Path, guest: Path) -> tuple[float, float, tuple[int, int]]:
    """How much of the guest's picture the screen fails to show where it fits best, at full size: (the share of
    the guest's text/drawing pixels that differ, the share of its background pixels that differ, the offset).
    A screen showing only the background colour, or other text, misses most of the drawing."""
    coarse = best_fit(screen, guest)
    sw, sh, spx = grey(screen, "100%")
    gw, gh, gpx = grey(guest, "100%")
    background = max(range(256), key=gpx.count)
    ink = [i for i, value in enumerate(gpx) if abs(value - background) > INK_CONTRAST]
    plain = [i for i, value in enumerate(gpx) if abs(value - background) <= INK_CONTRAST][::97]
    assert len(ink) > 100, "the guest's picture has nothing drawn on it"

    def misses(pixels: list[int], dx: int, dy: int) -> float:
        wrong = sum(1 for i in pixels if abs(spx[(dy + i // gw) * sw + dx + i % gw] - gpx[i]) > INK_CONTRAST)
        return wrong / len(pixels)

    offsets = [(coarse[0] + x, coarse[1] + y) for y in range(-4, 5) for x in range(-4, 5)
               if 0 <= coarse[0] + x <= sw - gw and 0 <= coarse[1] + y <= sh - gh]
    dx, dy = min(offsets, key=lambda o: misses(ink, *o))
    return misses(ink, dx, dy), misses(plain, dx, dy), (dx, dy)


def guest_screenshot(agent, desktop_id: str, path: Path) -> Path:
    from manager.nodes.client import NodeClient

    with NodeClient(agent.node.url, agent.node.token, timeout=60) as node:
        path.write_bytes(node.screenshot(desktop_id))
    return path


def not_blank(path: Path) -> bool:
    """The picture has something on it (not one flat colour)."""
    out = subprocess.run(["convert", str(path), "-colorspace", "Gray", "-format", "%[fx:standard_deviation]",
                          "info:"], check=True, capture_output=True, text=True, timeout=60).stdout
    return float(out) > 0.01


def viewer_shows_guest(screen: XScreen, viewer: subprocess.Popen, agent, desktop_id: str, tag: str,
                       timeout: float = 90.0) -> tuple[tuple[float, float, tuple[int, int]], Path]:
    """Screenshots of the viewer's screen until the guest's picture is on it; returns the fit and the screenshot."""
    deadline = time.monotonic() + timeout
    fit = (1.0, 1.0, (0, 0))
    while time.monotonic() < deadline:
        assert viewer.poll() is None, f"remote-viewer exited with {viewer.returncode}: " \
                                      f"{(screen.home / f'{tag}.log').read_text()[-2000:]}"
        shot = screen.screenshot(SHOTS / f"{tag}-viewer.png")
        node_shot = guest_screenshot(agent, desktop_id, SHOTS / f"{tag}-node.png")
        fit = mismatch(shot, node_shot)
        if fit[0] <= INK_TOLERANCE and fit[1] <= BACKGROUND_TOLERANCE:
            return fit, shot
        time.sleep(3)
    raise AssertionError(f"the viewer's screen never showed the guest ({fit[0]:.0%} of its drawing and {fit[1]:.0%} "
                         f"of its background differ at {fit[2]}); see {SHOTS}/{tag}-viewer.png and {tag}-node.png, "
                         f"log {(screen.home / f'{tag}.log').read_text()[-2000:]}")


def reachable(netns: str, address: str, port: int) -> bool:
    """Whether a TCP connection from the namespace to address:port succeeds (bash's /dev/tcp)."""
    return subprocess.run(["ip", "netns", "exec", netns, "timeout", "5", "bash", "-c",
                           f"exec 3<>/dev/tcp/{address}/{port}"], capture_output=True, timeout=30).returncode == 0


def console_file(client, token: str, session_id: str) -> str:
    r = client.get(f"{API}/broker/sessions/{session_id}/console-file", headers=bearer(token))
    assert r.status_code == 200, r.text
    return r.text


@contextlib.contextmanager
def spice_proxy(listen: str, log: Path):
    """`vdi spice-proxy` as its own process, on the manager's database."""
    from manager.config import get_settings

    env = dict(os.environ, VDI_DATABASE_URL=get_settings().effective_database_url)
    with open(log, "ab") as out:
        process = subprocess.Popen([sys.executable, "-m", "manager.cli", "spice-proxy", "--listen", listen],
                                   stdout=out, stderr=out, stdin=subprocess.DEVNULL, env=env)
    try:
        host, port = listen.rsplit(":", 1)
        deadline = time.monotonic() + 30
        while True:
            with contextlib.suppress(OSError), socket.create_connection((host, int(port)), timeout=1):
                break
            assert process.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.2)
        yield process
    finally:
        stop(process)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("0.0.0.0", 0))
        return probe.getsockname()[1]


def test_remote_viewer_on_another_machine_shows_the_desktop(real_node, published_image, network, world,  # noqa: F811
                                                            anon_client, client, monkeypatch):
    from manager import db
    from manager.config import get_settings
    from manager.models import Host

    SHOTS.mkdir(parents=True, exist_ok=True)
    netns, client_address = network.client_namespace("viewer")
    display_address = network.manager_address  # this machine's address on the hosts' network
    pool_id = setup_pool(real_node, published_image, "automatic")
    with db.session_scope() as s:
        host_id = s.scalar(select(Host.id).where(Host.name == "real1"))

    # The administrator gives the host its display address; the host's domains are defined again with it.
    r = client.patch(f"{API}/hosts/{host_id}", json={"display_address": display_address})
    assert r.status_code == 200 and r.json()["display_address"] == display_address, r.text
    wait_for_jobs(180)
    assert client.patch(f"{API}/hosts/{host_id}", json={"display_address": "not an address!"}).status_code == 422

    user, token = world.user("vera")
    world.entitle(pool_id=pool_id, user_id=user)
    got = connect(anon_client, token, pool_id)
    desktop_id, session_id = got["desktop_id"], got["session_id"]
    assert got["console"]["host"] == display_address
    port = got["console"]["port"]
    # The display listens on the host's display address: the user's machine reaches it there, and has no way to
    # this machine's loopback (the address every display listened on before).
    assert reachable(netns, display_address, port)
    assert not reachable(netns, "127.0.0.1", port)
    wait_guest_ready(real_node, desktop_id)
    assert not_blank(guest_screenshot(real_node, desktop_id, SHOTS / "guest.png")), \
        "the guest shows nothing on its screen (see the demo image)"

    with XScreen(netns, SHOTS / "home") as screen:
        vv = SHOTS / "direct.vv"
        vv.write_text(console_file(anon_client, token, session_id))  # the broker's file, as it is
        assert f"host={display_address}\n" in vv.read_text() and "smartcard-insert" not in vv.read_text()
        viewer = screen.start(["remote-viewer", str(vv)], screen.home / "direct.log")
        fit, shot = viewer_shows_guest(screen, viewer, real_node, desktop_id, "direct")
        print(f"remote-viewer shows the guest at {fit[2]} ({fit[0]:.1%} of its drawing differs): {shot}")
        stop(viewer)

        # ---- through the SPICE proxy --------------------------------------------------------------------------------
        proxy_listen = f"{display_address}:{free_port()}"
        proxy_log = SHOTS / "spice-proxy.log"
        proxy_log.write_text("")
        with spice_proxy(proxy_listen, proxy_log):
            monkeypatch.setattr(get_settings(), "spice_proxy", f"http://{proxy_listen}")
            text = console_file(anon_client, token, session_id)
            assert f"proxy=http://{proxy_listen}\n" in text
            vv = SHOTS / "proxied.vv"
            vv.write_text(text)
            viewer = screen.start(["remote-viewer", str(vv)], screen.home / "proxied.log")
            fit, shot = viewer_shows_guest(screen, viewer, real_node, desktop_id, "proxied")
            print(f"remote-viewer through the proxy shows the guest at {fit[2]} ({fit[0]:.1%} differs): {shot}")
            stop(viewer)
            log = proxy_log.read_text()
            assert f"tunnel {client_address}:" in log and f"-> {display_address}:{port} opened" in log, log
            # the proxy is no way into anything else: the node agent's port on this machine is refused
            agent = f"127.0.0.1:{real_node.node.port}"
            with socket.create_connection(tuple(proxy_listen.rsplit(":", 1)), timeout=10) as probe:
                probe.sendall(f"CONNECT {agent} HTTP/1.1\r\nHost: {agent}\r\n\r\n".encode())
                assert probe.recv(100).startswith(b"HTTP/1.1 403"), proxy_log.read_text()
    anon_client.post(f"{API}/broker/logoff", json={"session_id": session_id}, headers=bearer(token))
    wait_for_jobs(180)


class RdpListener:
    """A TCP listener standing in for the guest's RDP service: records who connected and what they sent first
    (an RDP client opens with an X.224 Connection Request: TPKT version 3)."""

    def __init__(self, address: str) -> None:
        self.sock = socket.create_server((address, 3389))
        self.first_bytes: list[tuple[str, bytes]] = []
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        with contextlib.suppress(OSError):
            while True:
                conn, peer = self.sock.accept()
                with conn:
                    conn.settimeout(10)
                    with contextlib.suppress(OSError):
                        self.first_bytes.append((peer[0], conn.recv(64)))

    def close(self) -> None:
        self.sock.close()


def test_xfreerdp_opens_the_rdp_file_and_reaches_the_guests_address(network, world, anon_client, client,
                                                                   node_agents, template_image):
    """The .rdp names the address the guest reported (Desktop.ip); Debian's xfreerdp reads the file as the broker
    returns it and connects there. Before the guest has reported an address, a connect is a clear 503."""
    from manager import db
    from manager.models import Desktop

    netns, client_address = network.client_namespace("rdp")
    world.hosts()
    pool_id = world.pool(1, os_type="windows_11", protocols="rdp")
    user, token = world.user("rita")
    world.entitle(pool_id=pool_id, user_id=user)
    body = {"pool_id": pool_id, "client": {"protocols": ["rdp"]}}
    with db.session_scope() as s:
        desktop = s.scalars(select(Desktop).where(Desktop.pool_id == pool_id)).one()
        desktop.ip = ""
    r = anon_client.post(f"{API}/broker/connect", json=body, headers=bearer(token))
    assert r.status_code == 503 and "has not reported its IP address" in r.json()["detail"], r.text

    guest_address = network.manager_address  # stands in for the guest: an address on the users' network
    with db.session_scope() as s:
        s.scalars(select(Desktop).where(Desktop.pool_id == pool_id)).one().ip = guest_address
    r = anon_client.post(f"{API}/broker/connect", json=body, headers=bearer(token))
    assert r.status_code == 200, r.text
    rdp = SHOTS / "desktop.rdp"
    SHOTS.mkdir(parents=True, exist_ok=True)
    rdp.write_bytes(r.json()["file"]["content"].encode())
    assert f"full address:s:{guest_address}:3389\r\n".encode() in rdp.read_bytes()
    listener = RdpListener(guest_address)
    try:
        with XScreen(netns, SHOTS / "home-rdp") as screen:
            log = screen.home / "xfreerdp.log"
            viewer = screen.start(["xfreerdp", str(rdp), "/cert:ignore", "/timeout:10000", "-authentication",
                                   "/u:rita", "/p:x"], log)
            deadline = time.monotonic() + 60
            while not listener.first_bytes and time.monotonic() < deadline and viewer.poll() is None:
                time.sleep(0.2)
            stop(viewer)
            output = log.read_text()
    finally:
        listener.close()
    assert listener.first_bytes, f"xfreerdp never reached {guest_address}:3389: {output[-2000:]}"
    peer, first = listener.first_bytes[0]
    assert peer == client_address and first[:1] == b"\x03", (peer, first)  # TPKT: an RDP connection request
    assert "Usage: xfreerdp" not in output, output  # what FreeRDP answers to a file it cannot parse


@pytest.fixture(scope="module")
def tls_cluster():
    """One harness host whose libvirt has SPICE TLS on (its own qemu.conf: spice_tls, the certificate directory the
    agent fills with what the manager sends)."""
    import tempfile

    base = Path(tempfile.mkdtemp(prefix="vdi-cluster-", dir="/tmp"))
    (base / "hosts" / "tls1" / "spice-tls").mkdir(parents=True)  # libvirtd refuses to start without it
    cluster = HostCluster(base, qemu_conf_extra='spice_tls = 1\nspice_tls_x509_cert_dir = "{host_dir}/spice-tls"\n',
                          agent_options=["--spice-tls-dir", "{host_dir}/spice-tls"])
    try:
        cluster.start_host("tls1")
        yield cluster
    finally:
        cluster.close()
        shutil.rmtree(base, ignore_errors=True)


def test_remote_viewer_over_spice_tls(tls_cluster, world, anon_client, client, monkeypatch):
    """VDI_SPICE_TLS: the manager's CA issues the host a certificate as the host is reconciled (here: when its
    display address is set), libvirt gives the display a TLS port, and the .vv (TLS port only, the CA, the host's
    subject) opens in remote-viewer on the user's machine, showing the guest."""
    from types import SimpleNamespace

    from core.enums import HostStatus
    from image_manager.demo_image import ensure_demo_image
    from manager import console_tls, db
    from manager.config import get_settings
    from manager.models import Cluster, Host

    monkeypatch.setattr(get_settings(), "spice_tls", True)
    SHOTS.mkdir(parents=True, exist_ok=True)
    netns, _ = tls_cluster.client_namespace("viewer")
    display_address = tls_cluster.manager_address
    node = SimpleNamespace(node=SimpleNamespace(url=tls_cluster.agent_url("tls1"), token=tls_cluster.token("tls1")))
    with db.session_scope() as s:
        cluster = Cluster(name="tls")
        s.add(cluster)
        s.flush()
        host = Host(name="tls1", cluster_id=cluster.id, agent_url=node.node.url, agent_token=node.node.token,
                    address=tls_cluster.host("tls1").address, status=HostStatus.UP, memory_mib=8192,
                    free_memory_mib=4096)
        s.add(host)
        s.flush()
        host_id = host.id
    image = ensure_demo_image().publish(tls_cluster.shared_dir / "templates")
    pool_id = setup_pool(None, image, "automatic", host_name="tls1")
    r = client.patch(f"{API}/hosts/{host_id}", json={"display_address": display_address})
    assert r.status_code == 200, r.text
    wait_for_jobs(180)
    tls_dir = tls_cluster.host("tls1").base / "spice-tls"
    assert sorted(p.name for p in tls_dir.glob("*.pem")) == ["ca-cert.pem", "server-cert.pem", "server-key.pem"]

    user, token = world.user("tess")
    world.entitle(pool_id=pool_id, user_id=user)
    got = connect(anon_client, token, pool_id)
    assert got["console"]["tls_port"], got["console"]
    wait_guest_ready(node, got["desktop_id"])
    text = console_file(anon_client, token, got["session_id"])
    assert f"tls-port={got['console']['tls_port']}\n" in text and "\nport=" not in text
    assert "host-subject=CN=tls1\n" in text
    assert "ca=" + console_tls.ca_certificate().replace("\n", "\\n") + "\n" in text
    with XScreen(netns, SHOTS / "home-tls") as screen:
        vv = SHOTS / "tls.vv"
        vv.write_text(text)
        viewer = screen.start(["remote-viewer", str(vv)], screen.home / "tls.log")
        fit, shot = viewer_shows_guest(screen, viewer, node, got["desktop_id"], "tls")
        print(f"remote-viewer over TLS shows the guest at {fit[2]} ({fit[0]:.1%} differs): {shot}")
        stop(viewer)

        # a client that expects another host's certificate refuses this one
        vv = SHOTS / "tls-wrong-subject.vv"
        vv.write_text(console_file(anon_client, token, got["session_id"]).replace("host-subject=CN=tls1",
                                                                                  "host-subject=CN=other"))
        log = screen.home / "tls-wrong.log"
        viewer = screen.start(["remote-viewer", str(vv)], log)
        deadline = time.monotonic() + 60
        while "verification failed" not in log.read_text() and time.monotonic() < deadline:
            time.sleep(0.5)
        assert "subject 'CN=other' verification failed" in log.read_text(), log.read_text()[-2000:]
        shot = screen.screenshot(SHOTS / "tls-wrong-viewer.png")
        node_shot = guest_screenshot(node, got["desktop_id"], SHOTS / "tls-wrong-node.png")
        assert mismatch(shot, node_shot)[0] > 0.5, "a client expecting another subject showed the guest"
        stop(viewer)
    anon_client.post(f"{API}/broker/logoff", json={"session_id": got["session_id"]}, headers=bearer(token))
    wait_for_jobs(180)


def test_a_host_without_a_tls_directory_says_so_and_keeps_plain_consoles(world, client, monkeypatch):
    """VDI_SPICE_TLS with a node agent started without --spice-tls-dir: applying the host's display address still
    defines its desktops again, and one warning event says why the host has no certificate."""
    from manager.config import get_settings

    monkeypatch.setattr(get_settings(), "spice_tls", True)
    [host_id] = world.hosts(1)
    world.pool(1)
    r = client.patch(f"{API}/hosts/{host_id}", json={"display_address": "192.0.2.7"})
    assert r.status_code == 200, r.text
    wait_for_jobs(60)
    [job] = client.get(f"{API}/jobs", params={"kind": "hosts.reconcile"}).json()["items"]
    assert job["state"] == "succeeded" and len(job["result"]["updated"]) == 1, job
    # Filtered by code: the shared test-driver node also reports other tests' domains (host.unknown_domain), which
    # can fill a page of this host's events.
    events = client.get(f"{API}/events", params={"host_id": host_id, "code": "host.spice_tls_failed"}).json()["items"]
    [warning] = events
    assert "--spice-tls-dir" in warning["message"]
