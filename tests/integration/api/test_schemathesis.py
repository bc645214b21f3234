"""The API keeps the promises of its OpenAPI document, fuzzed by schemathesis as each role (issue 22 acceptance).

`vdi demo` (hosts on libvirt's test driver, so power actions and consoles answer at once; the demo template, a
pool, desktops, users) seeded into a fresh Postgres database, `vdi serve` (tests/e2e/server.py's running_manager),
and schemathesis's own CLI against /openapi.json with a bearer token of each role. Checks: no server error
(a 500 always fails; 502/503/504 are answers about a host, allowed where documented), every status code
documented, every reply matching its documented schema. 0 failures.

Bounded: a fixed seed, a few examples per operation (hypothesis deadline off, as everywhere here). The coverage
phase (boundary values of every parameter) runs as SuperUser, who reaches every route; the other roles fuzz.
Excluded, with reason: POST /auth/logout (it ends the very session the run uses). SuperUser runs last: its writes
(hosts into maintenance, accounts disabled) change what the others could reach.
"""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.e2e.server import running_manager
from tests.harness.postgres import fresh_database

pytestmark = [pytest.mark.postgres, pytest.mark.libvirt, pytest.mark.slow]

SCHEMATHESIS = Path(sys.executable).with_name("schemathesis")
CONFIG = """
[checks.not_a_server_error]
expected-statuses = ["2XX", "3XX", "4XX", "502", "503", "504"]
"""
CHECKS = "not_a_server_error,status_code_conformance,response_schema_conformance"
EXCLUDED = ["/api/v1/auth/logout"]


@pytest.fixture(scope="module")
def manager():
    with fresh_database("vdi_fuzz") as url, running_manager(url) as server:
        yield server


@pytest.mark.parametrize("role", ["User", "HelpDesk", "DesktopAdmin", "SuperUser"])
def test_the_api_keeps_its_openapi_promises(manager, role, tmp_path):
    token = manager.api(manager.account(role)).headers["Authorization"].removeprefix("Bearer ")
    config = tmp_path / "schemathesis.toml"
    config.write_text(CONFIG)
    phases = "coverage,fuzzing" if role == "SuperUser" else "fuzzing"
    argv = [str(SCHEMATHESIS), "--no-color", "--config-file", str(config), "run",
            f"{manager.base_url}/openapi.json", "--header", f"Authorization: Bearer {token}",
            "--checks", CHECKS, "--phases", phases, "--max-examples", "4", "--seed", "22", "--workers", "2",
            "--request-timeout", "60", "--no-shrink"]
    for path in EXCLUDED:
        argv += ["--exclude-path", path]
    run = subprocess.run(argv, capture_output=True, text=True, timeout=900, stdin=subprocess.DEVNULL,
                         cwd=tmp_path)
    report = run.stdout[-20000:] + run.stderr[-5000:]
    log = manager.log_path.read_text(errors="replace")[-8000:] if manager.log_path.exists() else ""
    assert run.returncode == 0, f"schemathesis as {role}:\n{report}\n--- manager log (tail):\n{log}"
    tested = re.search(r"Tested: (\d+)", run.stdout)
    assert tested and int(tested.group(1)) > 100, report  # it reached the operations, not a handful
