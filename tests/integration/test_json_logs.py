"""VDI_LOG_FORMAT=json: `vdi serve` writes one JSON object per log line, a request's records carry its request id
(the caller's X-Request-ID, or one made up and sent back) and correlation id; jobs queued by a request keep it."""
from __future__ import annotations

import json
import subprocess
import sys

import httpx
import pytest

from manager.embedded_nodes import wait_until_answers
from tests.integration.test_embedded_smoke import embedded_env, free_port, run_vdi  # noqa: F401 (fixture)


def test_serve_writes_json_lines_with_the_request_ids(embedded_env, tmp_path):  # noqa: F811
    env = {**embedded_env, "VDI_LOG_FORMAT": "json", "VDI_PORT": str(free_port()), "VDI_EMBEDDED_NODES": "false"}
    upgraded = run_vdi(env, "db", "upgrade")
    assert upgraded.returncode == 0, upgraded.stderr
    log_file = tmp_path / "serve.log"
    with log_file.open("w") as out:  # the log goes to stderr
        server = subprocess.Popen([sys.executable, "-m", "manager.cli", "serve", "--no-upgrade", "--access-log"],
                                  env=env, stdout=subprocess.DEVNULL, stderr=out, text=True)
    base = f"http://127.0.0.1:{env['VDI_PORT']}/api/v1"
    try:
        try:
            wait_until_answers(f"{base}/health", server, "vdi serve")
        except RuntimeError as exc:
            pytest.fail(f"{exc}:\n" + log_file.read_text())
        login = httpx.post(f"{base}/auth/login", json={"username": "admin", "password": "wrong-password"},
                           headers={"X-Request-ID": "req-42", "X-Correlation-ID": "corr-7"})
        assert login.status_code == 401 and login.headers["x-request-id"] == "req-42"
        made_up = httpx.get(f"{base}/health", headers={"X-Request-ID": "not a token; too odd"})
        assert made_up.headers["x-request-id"] != "not a token; too odd" and len(made_up.headers["x-request-id"]) == 32
    finally:
        server.terminate()
        server.wait(timeout=20)
    lines = [line for line in log_file.read_text().splitlines() if line.strip()]
    records = [json.loads(line) for line in lines]  # every line is one JSON object
    assert records and all({"time", "level", "logger", "message"} <= set(r) for r in records)
    failed_login = [r for r in records if r["logger"] == "vdi.events" and "user.login_failed" in r["message"]]
    assert failed_login and all(r["request_id"] == "req-42" and r["correlation_id"] == "corr-7"
                                for r in failed_login)


def test_a_job_keeps_the_correlation_id_of_the_request_that_queued_it(db_session):
    from manager import logs
    from manager.identity.sync_tasks import JOB_KIND
    from manager.jobs import enqueue

    token = logs.correlation_id.set("corr-from-request")
    try:
        job = enqueue(db_session, JOB_KIND, params={"full": None, "actor": "test"})
    finally:
        logs.correlation_id.reset(token)
    assert job.correlation_id == "corr-from-request"
    assert enqueue(db_session, JOB_KIND, params={"full": None, "actor": "test"}).correlation_id == ""
    db_session.rollback()  # queued nothing: the job is sent only after a commit
