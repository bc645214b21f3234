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
# says so, and waits. The holder is qemu-io reading commands from a pipe the parent never writes to: it holds
# the image until it is killed (qemu-io's own "sleep" command runs on the wall clock, which may jump).
PARENT = textwrap.dedent("""
    import subprocess, sys, time
    with open(sys.argv[2], "wb") as log:
        holder = subprocess.Popen(["qemu-io", sys.argv[1]], start_new_session=True, stdin=subprocess.PIPE,
                                  stdout=log, stderr=log)
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
    holder_log = tmp_path / "holder.log"
    parent = subprocess.Popen([sys.executable, "-c", PARENT, str(image), str(holder_log)], stdout=subprocess.PIPE,
                              text=True)
    holder_pid = int(parent.stdout.readline())
    # qemu-io prompts once it has the image open (a lock probe before that could make ITS open fail)
    deadline = time.monotonic() + 60
    while "qemu-io>" not in holder_log.read_text():
        if time.monotonic() > deadline or exited(holder_pid):
            kill_process_tree(parent)
            pytest.fail(f"qemu-io did not open the image: {holder_log.read_text()!r}")
        time.sleep(0.05)
    with pytest.raises(ImageInUse):
        qemu_img.info(image)

    killed = kill_process_tree(parent)

    assert killed == sorted([parent.pid, holder_pid])
    assert parent.returncode is not None and exited(holder_pid)
    assert qemu_img.info(image).virtual_size == 16 << 20  # no "Failed to get shared 'write' lock"
    parent.stdout.close()


def test_a_process_that_already_ended_is_only_reaped(tmp_path):
    done = subprocess.Popen([sys.executable, "-c", "pass"])
    done.wait()
    assert kill_process_tree(done) == []
