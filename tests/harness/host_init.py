"""PID 1 of one harness "host": private mounts, virtlogd (virtlockd), libvirtd, then reaping until told to stop.

Started by tests/harness/hosts.py as
    unshare --mount --pid --fork --mount-proc --propagation private -- python host_init.py --base DIR
so everything this host runs (daemons, QEMU, the node agent) shares one PID namespace whose init is
this program. That gives the harness two things a real machine has: orphans (QEMU daemonizes) are
reaped here instead of piling up as zombies, and a hard power-off is "SIGKILL every PID in the
namespace". Standard library only: it runs before any project code matters.

Signals: SIGTERM = orderly shutdown (every process gets SIGTERM, then SIGKILL after a grace period);
SIGUSR1 = restart libvirtd only (QEMU keeps running, as after `systemctl restart libvirtd`).
Prints READY (or FAILED <reason>) on stdout once libvirtd accepts connections.

With --virtlockd (the host's qemu.conf sets lock_manager = "lockd"), the host also runs its own virtlockd, as
systemd's virtlockd.socket provides on a real host: libvirtd's lockd plugin connects to
/run/libvirt/virtlockd-sock, which is private to the host. The host's qemu-lockd.conf (beside its qemu.conf)
is bound over /etc/libvirt/qemu-lockd.conf.
"""
from __future__ import annotations

import argparse
import errno
import os
import signal
import socket
import subprocess
import sys
import time

# Bound over the host's own paths: private state per host, like separate machines.
PRIVATE_DIRS = {
    "run": "/run",
    "lib": "/var/lib/libvirt",
    "log": "/var/log/libvirt",
    "cache": "/var/cache/libvirt",
    "etc-qemu": "/etc/libvirt/qemu",
}
LIBVIRT_SOCKET = "/run/libvirt/libvirt-sock"
VIRTLOGD_SOCKET = "/run/libvirt/virtlogd-sock"
VIRTLOCKD_SOCKET = "/run/libvirt/virtlockd-sock"
GRACE_SECONDS = 10.0


class HostInit:
    def __init__(self, base: str, config: str, virtlockd: bool = False) -> None:
        self.base = base
        self.config = config
        self.with_virtlockd = virtlockd
        self.virtlogd: subprocess.Popen | None = None
        self.virtlockd: subprocess.Popen | None = None
        self.libvirtd: subprocess.Popen | None = None
        self.stop_requested = False
        self.restart_requested = False

    def mount_private_dirs(self) -> None:
        for sub, target in PRIVATE_DIRS.items():
            source = os.path.join(self.base, sub)
            os.makedirs(source, exist_ok=True)
            subprocess.run(["mount", "--bind", source, target], check=True)
        for path in ("/run/libvirt", "/var/lib/libvirt/qemu", "/var/lib/libvirt/images"):
            os.makedirs(path, exist_ok=True)
        qemu_conf = os.path.join(self.base, "qemu.conf")  # the host's own display port range
        if os.path.exists(qemu_conf) and os.path.exists("/etc/libvirt/qemu.conf"):
            subprocess.run(["mount", "--bind", qemu_conf, "/etc/libvirt/qemu.conf"], check=True)
        lockd_conf = os.path.join(self.base, "qemu-lockd.conf")
        if os.path.exists(lockd_conf) and os.path.exists("/etc/libvirt/qemu-lockd.conf"):
            subprocess.run(["mount", "--bind", lockd_conf, "/etc/libvirt/qemu-lockd.conf"], check=True)

    def start_virtlogd(self) -> None:
        log = open("/var/log/libvirt/virtlogd.stderr", "ab")
        self.virtlogd = subprocess.Popen(["virtlogd"], stdout=log, stderr=log, stdin=subprocess.DEVNULL)
        _wait_for_socket(VIRTLOGD_SOCKET, self.virtlogd, "virtlogd")

    def start_virtlockd(self) -> None:
        log = open("/var/log/libvirt/virtlockd.stderr", "ab")
        self.virtlockd = subprocess.Popen(["virtlockd"], stdout=log, stderr=log, stdin=subprocess.DEVNULL)
        _wait_for_socket(VIRTLOCKD_SOCKET, self.virtlockd, "virtlockd")

    def start_libvirtd(self) -> None:
        log = open("/var/log/libvirt/libvirtd.stderr", "ab")
        self.libvirtd = subprocess.Popen(["libvirtd", "--config", self.config], stdout=log, stderr=log,
                                         stdin=subprocess.DEVNULL)
        _wait_for_socket(LIBVIRT_SOCKET, self.libvirtd, "libvirtd")

    def restart_libvirtd(self) -> None:
        if self.libvirtd is not None and self.libvirtd.poll() is None:
            self.libvirtd.terminate()
            _wait_reaping(lambda: self.libvirtd.poll() is not None, GRACE_SECONDS)
            if self.libvirtd.poll() is None:
                self.libvirtd.kill()
        with _suppress_missing():
            os.unlink(LIBVIRT_SOCKET)
        self.start_libvirtd()
        _say("RESTARTED")

    def shutdown(self) -> None:
        # kill(-1) from a namespace's init reaches every other process of the namespace, and only them.
        with _suppress_missing():
            os.kill(-1, signal.SIGTERM)
        _wait_reaping(lambda: not _other_processes_alive(), GRACE_SECONDS)
        with _suppress_missing():
            os.kill(-1, signal.SIGKILL)
        _wait_reaping(lambda: not _other_processes_alive(), GRACE_SECONDS)

    def run(self) -> int:
        signal.signal(signal.SIGTERM, self._on_term)
        signal.signal(signal.SIGINT, self._on_term)
        signal.signal(signal.SIGUSR1, self._on_usr1)
        try:
            self.mount_private_dirs()
            self.start_virtlogd()
            if self.with_virtlockd:
                self.start_virtlockd()
            self.start_libvirtd()
        except Exception as exc:  # report why, then take everything down
            _say(f"FAILED {type(exc).__name__}: {exc}")
            self.shutdown()
            return 1
        _say("READY")
        while not self.stop_requested:
            _reap_children()
            if self.restart_requested:
                self.restart_requested = False
                try:
                    self.restart_libvirtd()
                except Exception as exc:
                    _say(f"FAILED restart: {exc}")
            time.sleep(0.1)
        self.shutdown()
        return 0

    def _on_term(self, signum: int, frame: object) -> None:
        self.stop_requested = True

    def _on_usr1(self, signum: int, frame: object) -> None:
        self.restart_requested = True


def _say(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def _reap_children() -> None:
    while True:
        try:
            pid, _status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def _other_processes_alive() -> bool:
    me = os.getpid()
    for entry in os.listdir("/proc"):
        if entry.isdigit() and int(entry) != me:
            try:
                with open(f"/proc/{entry}/stat") as handle:
                    state = handle.read().rsplit(")", 1)[1].split()[0]
            except OSError:
                continue
            if state != "Z":
                return True
    return False


def _wait_reaping(done, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        _reap_children()
        if done():
            return
        time.sleep(0.05)
    _reap_children()


def _wait_for_socket(path: str, process: subprocess.Popen, what: str, seconds: float = 30.0) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{what} exited with {process.returncode}; see /var/log/libvirt/{what}.stderr")
        if os.path.exists(path):
            probe = socket.socket(socket.AF_UNIX)
            try:
                probe.connect(path)
                return
            except OSError:
                pass
            finally:
                probe.close()
        time.sleep(0.05)
    raise RuntimeError(f"{what} did not open {path} within {seconds} s")


class _suppress_missing:
    def __enter__(self) -> None:
        return None

    def __exit__(self, kind, value, traceback) -> bool:
        return isinstance(value, OSError) and value.errno in (errno.ENOENT, errno.ESRCH)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", required=True, help="the host's state directory")
    parser.add_argument("--config", required=True, help="libvirtd.conf for this host")
    parser.add_argument("--virtlockd", action="store_true", help="run virtlockd (qemu.conf lock_manager = lockd)")
    args = parser.parse_args()
    if os.getpid() != 1:
        _say("FAILED host_init must be PID 1 of its own PID namespace (start it through unshare --pid --fork)")
        return 2
    return HostInit(args.base, args.config, virtlockd=args.virtlockd).run()


if __name__ == "__main__":
    raise SystemExit(main())
