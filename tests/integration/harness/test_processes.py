"""tests.harness.processes.kill_process_tree: when it returns, the whole tree has exited and released its
image locks, so a crash test's next qemu-img call never meets a lock held by a dying process."""
from __future__ import annotations

import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from image_manager import qemu_img
from image_manager.errors import ImageInUse
from tests.harness.processes import kill_process_tree

pytestmark = pytest.mark.skipif(shutil.which("qemu-io") is None, reason="qemu-io is not installed (qemu-utils)")

# A parent that starts a lock holder in a session of its own (as image_manager.qemu_img starts qemu-img),
# says so, and waits.
PARENT = textwrap.dedent("""
    import subprocess, sys, time
    holder = subprocess.Popen(["qemu-io", "-c", "sleep 600000", sys.argv[1]], start_new_session=True,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    print(holder.pid, flush=True)
    time.sleep(600)
""")


def exited(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return True
    return state in ("Z", "X")  # a zombie has closed its files already; init reaps it


def test_the_tree_is_gone_and_the_image_lock_released_when_it_returns(tmp_path):
    image = qemu_img.create(tmp_path / "held.qcow2", size=16 << 20)
    parent = subprocess.Popen([sys.executable, "-c", PARENT, str(image)], stdout=subprocess.PIPE, text=True)
    holder_pid = int(parent.stdout.readline())
    deadline = time.monotonic() + 60
    while True:  # until the holder has the image open and locked
        try:
            qemu_img.info(image)
        except ImageInUse:
            break
        assert time.monotonic() < deadline, "qemu-io never locked the image"
        time.sleep(0.05)

    killed = kill_process_tree(parent)

    assert killed == sorted([parent.pid, holder_pid])
    assert parent.returncode is not None and exited(holder_pid)
    assert qemu_img.info(image).virtual_size == 16 << 20  # no "Failed to get shared 'write' lock"
    parent.stdout.close()


def test_a_process_that_already_ended_is_only_reaped(tmp_path):
    done = subprocess.Popen([sys.executable, "-c", "pass"])
    done.wait()
    assert kill_process_tree(done) == []
