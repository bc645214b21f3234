"""Every `vdi` subcommand answers --help (exit 0, a usage line), as the README promises."""
from __future__ import annotations

import subprocess
import sys

import pytest

SUBCOMMANDS = [["serve"], ["worker"], ["node"], ["db"], ["demo"], ["image"]]


@pytest.mark.parametrize("args", SUBCOMMANDS, ids=lambda a: " ".join(a))
def test_subcommand_help(args):
    result = subprocess.run([sys.executable, "-m", "manager.cli", *args, "--help"], capture_output=True, text=True,
                            timeout=60, stdin=subprocess.DEVNULL)
    assert result.returncode == 0, result.stderr
    assert "usage:" in result.stdout.lower()


def test_unknown_subcommand_is_a_clear_error():
    result = subprocess.run([sys.executable, "-m", "manager.cli", "frobnicate"], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 2 and "invalid choice" in result.stderr
