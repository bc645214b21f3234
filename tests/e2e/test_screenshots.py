"""scripts/screenshots.py, run as a person runs it, against the session's manager (--base-url)."""
from __future__ import annotations

import subprocess
import sys

from tests.e2e.server import REPO

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def test_the_script_saves_a_png_per_page_of_a_running_manager(vdi_server, chromium, tmp_path):
    password = tmp_path / "password"
    password.write_text(vdi_server.admin.password)
    out = tmp_path / "shots"
    result = subprocess.run(
        [sys.executable, "scripts/screenshots.py", "--base-url", vdi_server.base_url, "--username",
         vdi_server.admin.username, "--password-file", str(password), "--out", str(out), "api=/docs", "/redoc",
         "host=/admin/hosts/{Hosts: name = vs-a}"],
        cwd=REPO, capture_output=True, text=True, timeout=600, stdin=subprocess.DEVNULL)
    assert result.returncode == 0, result.stderr[-3000:]
    assert sorted(p.name for p in out.iterdir()) == ["api.png", "host.png", "redoc.png"]
    assert all(p.read_bytes().startswith(PNG_SIGNATURE) for p in out.iterdir())
    assert result.stdout.split() == [str(out / "api.png"), str(out / "redoc.png"), str(out / "host.png")]


def test_a_search_that_finds_nothing_to_photograph_is_an_error(vdi_server, chromium, tmp_path):
    password = tmp_path / "password"
    password.write_text(vdi_server.admin.password)
    result = subprocess.run(
        [sys.executable, "scripts/screenshots.py", "--base-url", vdi_server.base_url, "--username",
         vdi_server.admin.username, "--password-file", str(password), "--out", str(tmp_path),
         "nothing=/admin/hosts/{Hosts: name = no-such-host}"],
        cwd=REPO, capture_output=True, text=True, timeout=600, stdin=subprocess.DEVNULL)
    assert result.returncode != 0 and "found nothing to photograph" in result.stderr
