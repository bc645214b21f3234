"""Killing a process a test started, together with everything it started, for crash tests.

A SIGKILL takes effect when the victim next leaves the kernel: a qemu-img blocked in disk I/O can run on for
a while after kill() returned, still holding its image's locks. Waiting for the direct child is not enough
either: its own children (qemu-img, started in a session of their own) are reaped by init, not by us.
So `kill_process_tree` waits, through a pidfd per process, until every one of them has really exited.
"""
from __future__ import annotations

import os
import select
import signal
import subprocess
from pathlib import Path


def _children(pid: int) -> list[int]:
    found: list[int] = []
    try:
        tasks = list(Path(f"/proc/{pid}/task").iterdir())
    except FileNotFoundError:
        return found
    for task in tasks:
        try:
            found += [int(child) for child in (task / "children").read_text().split()]
        except FileNotFoundError:
            pass  # the thread ended meanwhile
    return found


def kill_process_tree(proc: subprocess.Popen, timeout: float = 120.0) -> list[int]:
    """SIGKILL `proc` and all its descendants; return their pids once every one of them has exited
    (its files closed, its locks released) and `proc` is reaped.

    Each process is stopped (SIGSTOP) before its children are read, so none can start another process or
    reap one meanwhile (a stopped parent's children keep their pids). An already reaped `proc` is left
    alone and [] returned. Raises TimeoutError naming the pids that are still alive after `timeout` s (a
    process stuck in the kernel), which would otherwise make the test's next step fail mysteriously.
    """
    if proc.poll() is not None:
        return []  # reaped already: its pid may belong to another process by now
    pidfds: dict[int, int] = {}
    try:
        todo = [proc.pid]
        while todo:
            pid = todo.pop()
            if pid in pidfds:
                continue
            try:
                pidfds[pid] = os.pidfd_open(pid)
                signal.pidfd_send_signal(pidfds[pid], signal.SIGSTOP)
            except ProcessLookupError:
                continue  # already gone: nothing to wait for
            todo += _children(pid)
        for pidfd in pidfds.values():
            try:
                signal.pidfd_send_signal(pidfd, signal.SIGKILL)
            except ProcessLookupError:
                pass
        poller = select.poll()
        for pidfd in pidfds.values():
            poller.register(pidfd, select.POLLIN)  # readable once the process has exited
        pending = set(pidfds.values())
        while pending:
            events = poller.poll(timeout * 1000)
            if not events:
                alive = sorted(pid for pid, fd in pidfds.items() if fd in pending)
                raise TimeoutError(f"processes {alive} did not exit within {timeout} s of SIGKILL")
            for fd, _event in events:
                pending.discard(fd)
                poller.unregister(fd)
        proc.wait()
        return sorted(pidfds)
    finally:
        for pidfd in pidfds.values():
            os.close(pidfd)
