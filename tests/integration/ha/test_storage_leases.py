"""Storage leases (issue 16 item 3): with libvirt's lock manager (virtlockd) on every host, a running desktop's disk on
the shared storage is held by its host's virtlockd, so the same disk cannot start on another host; once that host is
gone (powered off: the kernel drops its virtlockd's fcntl locks) the disk starts elsewhere, and the new host's
virtlockd holds it.

Both of libvirt's lockspaces are exercised: the default one, which locks the disk file itself (`auto_disk_leases`),
and an indirect one on the shared storage (`file_lockspace_dir`: a lock file named by the SHA-256 of the disk path),
which is how block devices are protected across hosts.

What refuses the second start on these test hosts: libvirt starts QEMU paused and takes the lease when it resumes the
CPUs, after QEMU has opened its disks, so on one machine QEMU's own image lock (`Failed to get "write" lock`) answers
first. The lease is checked the way another host's virtlockd takes it: an fcntl write lock on the same byte, which
the kernel refuses while host1's virtlockd holds it (F_GETLK names the holder).

The last test takes QEMU's image lock out of the way to show the lease refusing on its own: host2 reaches the disk's
path through a file of its own (as each host reaches a shared LUN through its own device node, where QEMU's locks do
not cross hosts), so only the lease in the shared lockspace stands between the two starts."""
from __future__ import annotations

import fcntl
import hashlib
import os
import struct
import subprocess
from pathlib import Path

import libvirt
import pytest

from tests.harness.fixtures import demo_image, host_cluster_factory  # noqa: F401
from tests.harness.guests import SerialLog, demo_domain_xml, make_overlay

pytestmark = [pytest.mark.libvirt, pytest.mark.slow]

_FLOCK = "hhqqi4x"  # struct flock on Linux x86_64: l_type, l_whence, l_start, l_len, l_pid


def _lease_holder(path: Path) -> int | None:
    """The PID (in our namespace) of the process whose fcntl lock would refuse a write lock on byte 0 of `path`, as
    virtlockd takes it; None when nobody holds one (virtlockd removes a lockspace file it releases)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        answer = fcntl.fcntl(fd, fcntl.F_GETLK, struct.pack(_FLOCK, fcntl.F_WRLCK, os.SEEK_SET, 0, 1, 0))
    finally:
        os.close(fd)
    kind, _whence, _start, _length, pid = struct.unpack(_FLOCK, answer)
    return None if kind == fcntl.F_UNLCK else pid


def _boot(conn, image, name: str, disk: Path, serial_log: Path, host_name: str):
    """Define the demo desktop `name` on `disk` on this host and wait for its boot; returns the domain."""
    domain = conn.defineXML(demo_domain_xml(image, name, disk, serial_log, host_name=host_name))
    domain.create()
    SerialLog(serial_log).wait_for(r"VDI-BOOT template=")
    return domain


@pytest.mark.parametrize("lockd_conf", ["", 'file_lockspace_dir = "{shared_dir}/lockd"'],
                         ids=["disk-file-locks", "shared-lockspace-dir"])
def test_a_disk_running_on_one_host_cannot_start_on_another_until_that_host_is_gone(
        host_cluster_factory, demo_image, lockd_conf):  # noqa: F811
    cluster = host_cluster_factory(hosts=0, agents=False, network=False, lock_manager="lockd",
                                   lockd_conf=lockd_conf)
    if lockd_conf:
        (cluster.shared_dir / "lockd").mkdir()  # on the shared storage, made once for all hosts
    for name in ("host1", "host2"):
        cluster.start_host(name)
    image = demo_image.publish(cluster.shared_dir / "templates")
    disk = make_overlay(image.template, cluster.shared_dir / "desk1.qcow2")
    lease = cluster.shared_dir / "lockd" / hashlib.sha256(str(disk).encode()).hexdigest() if lockd_conf else disk
    conn1, conn2 = libvirt.open(cluster.uri("host1")), libvirt.open(cluster.uri("host2"))
    try:
        on_host1 = _boot(conn1, image, "desk1", disk, cluster.shared_dir / "desk1.host1.log", "host1")
        virtlockd1 = cluster.pids("host1").virtlockd
        assert virtlockd1 and _lease_holder(lease) == virtlockd1

        on_host2 = conn2.defineXML(demo_domain_xml(image, "desk1", disk, cluster.shared_dir / "desk1.host2.log",
                                                   host_name="host2"))
        with pytest.raises(libvirt.libvirtError):
            on_host2.create()
        assert on_host2.state()[0] == libvirt.VIR_DOMAIN_SHUTOFF
        assert cluster.pids("host2").qemu == []
        assert on_host1.state()[0] == libvirt.VIR_DOMAIN_RUNNING
        assert _lease_holder(lease) == virtlockd1

        cluster.kill_host("host1")  # host1's QEMU and virtlockd die with it; the kernel drops their locks
        assert _lease_holder(lease) is None

        on_host2.create()
        SerialLog(cluster.shared_dir / "desk1.host2.log").wait_for(r"VDI-BOOT template=")
        assert on_host2.state()[0] == libvirt.VIR_DOMAIN_RUNNING
        virtlockd2 = cluster.pids("host2").virtlockd
        assert virtlockd2 and _lease_holder(lease) == virtlockd2
        on_host2.destroy()
        assert _lease_holder(lease) is None  # a guest that stops gives its lease back
    finally:
        conn1.close()
        conn2.close()


def test_the_lease_alone_refuses_a_second_start_where_qemus_image_lock_cannot_see_the_first(
        host_cluster_factory, demo_image):  # noqa: F811
    cluster = host_cluster_factory(hosts=0, agents=False, network=False, lock_manager="lockd",
                                   lockd_conf='file_lockspace_dir = "{shared_dir}/lockd"')
    (cluster.shared_dir / "lockd").mkdir()
    for name in ("host1", "host2"):
        cluster.start_host(name)
    image = demo_image.publish(cluster.shared_dir / "templates")
    disk = make_overlay(image.template, cluster.shared_dir / "lun.qcow2")
    # host2's own "device node" for the same path: another file bound over it in host2's mount namespace only
    own_node = make_overlay(image.template, cluster.shared_dir / "lun.host2-node.qcow2")
    subprocess.run(["nsenter", f"--target={cluster.host('host2').init_pid}", "--mount", "--", "mount", "--bind",
                    str(own_node), str(disk)], check=True)
    lease = cluster.shared_dir / "lockd" / hashlib.sha256(str(disk).encode()).hexdigest()
    conn1, conn2 = libvirt.open(cluster.uri("host1")), libvirt.open(cluster.uri("host2"))
    try:
        on_host1 = _boot(conn1, image, "lun", disk, cluster.shared_dir / "lun.host1.log", "host1")
        assert _lease_holder(lease) == cluster.pids("host1").virtlockd

        on_host2 = conn2.defineXML(demo_domain_xml(image, "lun", disk, cluster.shared_dir / "lun.host2.log",
                                                   host_name="host2"))
        with pytest.raises(libvirt.libvirtError) as refused:
            on_host2.create()
        message = str(refused.value)
        assert "Lockspace resource" in message and "is locked" in message, message  # virtlockd, not QEMU
        assert 'Failed to get "write" lock' not in message
        assert on_host2.state()[0] == libvirt.VIR_DOMAIN_SHUTOFF and cluster.pids("host2").qemu == []

        on_host1.destroy()  # the lease is given back: now host2 starts, so the lease was all that refused it
        on_host2.create()
        SerialLog(cluster.shared_dir / "lun.host2.log").wait_for(r"VDI-BOOT template=")
        assert _lease_holder(lease) == cluster.pids("host2").virtlockd
        on_host2.destroy()
    finally:
        conn1.close()
        conn2.close()
