"""The API keeps the promises of its OpenAPI document, fuzzed by schemathesis as each role (issue 22 acceptance).

`vdi demo` (hosts on libvirt's test driver, so power actions and consoles answer at once; the demo template, a
pool, desktops, users) seeded into a fresh Postgres database, `vdi serve` (tests/e2e/server.py's running_manager),
and schemathesis's own CLI against /openapi.json with a bearer token of each role. Checks: no server error
(a 500 always fails; 502/503/504 are answers about a host, allowed where documented), every status code
documented, every reply matching its documented schema. 0 failures.

Path ids are drawn from the objects that exist as well as generated (schemathesis_hooks.py), so actions reach
real desktops, pools and templates, not only 404s. Bounded: a fixed seed; as SuperUser, who reaches every route,
the coverage phase (boundary values of every parameter) and 3 examples per operation; as the other roles, which
mostly check who may do what, 2 (hypothesis deadline off, as everywhere here). Excluded, with reason: POST
/auth/logout (it ends the very session the run uses). SuperUser runs last: its writes (hosts into maintenance,
accounts disabled) change what the others could reach.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.e2e.server import running_manager
from tests.harness.postgres import fresh_database

pytestmark = [pytest.mark.postgres, pytest.mark.slow]  # libvirt's test driver only: the light shard (tests/shards.py)

REPO = Path(__file__).resolve().parents[3]
SCHEMATHESIS = Path(sys.executable).with_name("schemathesis")
CONFIG = """
[checks.not_a_server_error]
expected-statuses = ["2XX", "3XX", "4XX", "502", "503", "504"]
"""
CHECKS = "not_a_server_error,status_code_conformance,response_schema_conformance"
EXCLUDED = ["/api/v1/auth/logout"]
LISTED = ["desktops", "pools", "templates", "hosts", "users", "groups", "tags", "bookmarks", "clusters",
          "storage-domains", "entitlements", "role-assignments", "jobs", "events", "sessions"]


@pytest.fixture(scope="module")
def manager():
    with fresh_database("vdi_fuzz") as url, running_manager(url) as server:
        yield server


@pytest.fixture(scope="module")
def ids_file(manager, tmp_path_factory) -> Path:
    """The ids of the demo's objects, by list (and template versions), for schemathesis_hooks.py."""
    admin = manager.admin_api
    ids = {}
    for path in LISTED:
        reply = admin.get(f"/{path}", params={"per_page": 100})
        reply.raise_for_status()
        ids[path] = [item["id"] for item in reply.json()["items"]]
    ids["versions"] = [version["id"] for template in ids["templates"]
                       for version in admin.get(f"/templates/{template}/versions").json()]
    assert ids["desktops"] and ids["pools"] and ids["versions"], ids  # the demo's, or the fuzz reaches nothing
    path = tmp_path_factory.mktemp("fuzz") / "ids.json"
    path.write_text(json.dumps(ids))
    return path


@pytest.mark.parametrize("role", ["User", "HelpDesk", "DesktopAdmin", "SuperUser"])
def test_the_api_keeps_its_openapi_promises(manager, ids_file, role, tmp_path):
    token = manager.api(manager.account(role)).headers["Authorization"].removeprefix("Bearer ")
    config = tmp_path / "schemathesis.toml"
    config.write_text(CONFIG)
    phases, examples = ("coverage,fuzzing", "3") if role == "SuperUser" else ("fuzzing", "2")
    argv = [str(SCHEMATHESIS), "--no-color", "--config-file", str(config), "run",
            f"{manager.base_url}/openapi.json", "--header", f"Authorization: Bearer {token}",
            "--checks", CHECKS, "--phases", phases, "--max-examples", examples, "--seed", "22", "--workers", "2",
            "--request-timeout", "60", "--no-shrink"]
    for path in EXCLUDED:
        argv += ["--exclude-path", path]
    env = {**os.environ, "SCHEMATHESIS_HOOKS": "tests.integration.api.schemathesis_hooks",
           "VDI_FUZZ_IDS_FILE": str(ids_file), "PYTHONPATH": str(REPO)}
    run = subprocess.run(argv, capture_output=True, text=True, timeout=900, stdin=subprocess.DEVNULL,
                         cwd=tmp_path, env=env)
    report = run.stdout[-20000:] + run.stderr[-5000:]
    log = manager.log_path.read_text(errors="replace")[-8000:] if manager.log_path.exists() else ""
    assert run.returncode == 0, f"schemathesis as {role}:\n{report}\n--- manager log (tail):\n{log}"
    tested = re.search(r"Tested: (\d+)", run.stdout)
    assert tested and int(tested.group(1)) > 100, report  # it reached the operations, not a handful
