"""The runner's pure pieces: which desktops a run profile asks for, the start marks' wrap, the commands' refusals.
A real run is tests/integration/planner/test_real_run.py."""
from __future__ import annotations

import subprocess
import sys

from planner.profiles import RunProfile
from planner.runner import DesktopState, desktop_query


def test_desktop_queries():
    assert desktop_query(RunProfile(users=1, mode="local", pool="p1")) == "Vms: pool = p1 sortby name"
    assert desktop_query(RunProfile(users=1, mode="local", name_prefix="pl-")) == "Vms: name = pl-* sortby name"
    assert desktop_query(RunProfile(users=1, mode="local", search="Vms: status = up")) == "Vms: status = up"


def test_start_marks_wrap_and_never_repeat_back_to_back():
    state = DesktopState({"name": "d"})
    marks = [state.next_seq() for _ in range(1000)]
    assert marks[:3] == [1, 2, 3] and marks[998] == 999 and marks[999] == 1
    assert all(a != b for a, b in zip(marks, marks[1:]))
    assert min(marks) == 1 and max(marks) == 999


def test_run_needs_a_token_and_valid_counts(tmp_path, monkeypatch):
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    done = subprocess.run([sys.executable, "-m", "manager.cli", "planner", "run"], capture_output=True, text=True,
                          timeout=60, env=env)
    assert done.returncode == 2 and "--token or VDI_TOKEN" in done.stderr
    done = subprocess.run([sys.executable, "-m", "manager.cli", "planner", "sweep", "--token", "t", "--users-list",
                           "0,2"], capture_output=True, text=True, timeout=60, env=env)
    assert done.returncode == 2 and "--users-list must be positive" in done.stderr
    bad = tmp_path / "run.yaml"
    bad.write_text("users: 2\nmode: telepathy\ndesktops: {pool: p}\n")
    done = subprocess.run([sys.executable, "-m", "manager.cli", "planner", "run", "--token", "t", "--profile",
                           str(bad)], capture_output=True, text=True, timeout=60, env=env)
    assert done.returncode == 2 and "mode must be one of local, remote, passive" in done.stderr
