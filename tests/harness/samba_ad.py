"""The throwaway Samba AD DC of scripts/test-ad.sh, for every test area that needs a real directory (the identity
integration tests, the portal's browser test). Needs root (the DC binds 88/389/636).

`start()` starts it, or finds it running, and returns its settings (the script's AD_* exports) and whether this
call started it; `stop()` stops it; a test that changes the directory calls `mark_dirty()` first and `reset()`
(the freshly seeded snapshot, ~1 s) afterwards; `start()` resets a directory left dirty by a crashed run."""
from __future__ import annotations

import os
import shlex
import subprocess
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "test-ad.sh"
AD_DIR = os.environ.get("VDI_TEST_AD_DIR", "/tmp/vdi-test-ad")
SEEDED_USERS = 200
REALM = "corp.example.com"
# Present while a test may have changed the directory; the next start (or test) restores the seed first.
DIRTY = Path(AD_DIR.rstrip("/") + ".dirty")


class DirectoryUnavailable(Exception):
    """The DC could not be started, stopped or reset (the script's error output is the message)."""


def script(action: str, timeout: int = 900) -> subprocess.CompletedProcess:
    env = {**os.environ, "AD_DIR": AD_DIR, "AD_MODEL": os.environ.get("AD_MODEL", "single"),
           "AD_USERS": str(SEEDED_USERS)}
    return subprocess.run(["bash", str(SCRIPT), action], capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL, env=env)


def parse_exports(stdout: str) -> dict[str, str]:
    out = {}
    for line in stdout.splitlines():
        if line.startswith("export "):
            key, _, value = line[len("export "):].partition("=")
            out[key] = shlex.split(value)[0] if value else ""
    return out


def start() -> tuple[dict[str, str], bool]:
    """(the DC's settings, whether this call started it). Raises DirectoryUnavailable."""
    was_running = script("status", timeout=60).returncode == 0
    started = script("start")
    if started.returncode != 0:
        raise DirectoryUnavailable(f"scripts/test-ad.sh start failed:\n{started.stderr[-3000:]}")
    env = parse_exports(started.stdout)
    if not (env.get("AD_LDAPS_URL") and env.get("AD_BASE_DN")):
        raise DirectoryUnavailable(f"scripts/test-ad.sh start printed no settings:\n{started.stdout}")
    if DIRTY.exists():
        reset()
    return env, not was_running


def stop() -> None:
    script("stop", timeout=120)


def mark_dirty() -> None:
    DIRTY.touch()


def reset() -> None:
    done = script("reset")
    if done.returncode != 0:
        raise DirectoryUnavailable(f"scripts/test-ad.sh reset failed:\n{done.stderr[-3000:]}")
    DIRTY.unlink(missing_ok=True)
