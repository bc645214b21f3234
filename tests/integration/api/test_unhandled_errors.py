"""An error nothing handles (issue 22 item 11): the client gets a clean 500 in JSON naming an incident, the
manager logs it once under that incident, and the keep-alive connection stays usable for the next request.

The error is a real one: the manager runs as a uvicorn process on a throwaway database whose `tags` table has
been dropped, so listing tags fails in the database driver with an error no handler expects."""
from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import httpx
from sqlalchemy import text
from sqlalchemy.orm import Session

from manager.embedded_nodes import free_port, stop_process, wait_until_answers
from tests.harness.postgres import fresh_database

REPO = Path(__file__).resolve().parents[3]
API = "/api/v1"


def _local_port(response: httpx.Response) -> int:
    """The client's port of the connection that carried `response` (same port: same connection)."""
    return response.extensions["network_stream"].get_extra_info("client_addr")[1]


def test_an_unhandled_error_is_a_500_logged_once_on_a_connection_that_stays_open():
    from manager import db
    from manager.auth import issue_token
    from manager.bootstrap import ensure_admin

    with fresh_database("vdi_test_unhandled") as url, tempfile.TemporaryDirectory() as work:
        engine = db.make_engine(url)
        try:
            with engine.begin() as conn:
                conn.execute(text("DROP TABLE tags CASCADE"))
            with Session(engine) as session:
                admin, _ = ensure_admin(session, password="admin-test-password")
                token = issue_token(session, admin, name="tests")
                session.commit()
        finally:
            engine.dispose()
        port, log = free_port(), Path(work) / "uvicorn.log"
        env = dict(os.environ, VDI_DATABASE_URL=url, VDI_DATA_DIR=str(Path(work) / "data"), VDI_LOG_LEVEL="INFO")
        env.pop("VDI_REDIS_URL", None)
        with open(log, "wb") as out:
            server = subprocess.Popen([sys.executable, "-m", "uvicorn", "manager.app:create_app", "--factory",
                                       "--host", "127.0.0.1", "--port", str(port), "--log-level", "info",
                                       "--no-access-log"], cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT)
        try:
            base = f"http://127.0.0.1:{port}"
            wait_until_answers(f"{base}{API}/health", server, "uvicorn")
            limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)
            with httpx.Client(base_url=base, limits=limits, headers={"Authorization": f"Bearer {token}"}) as client:
                failed = client.get(f"{API}/tags")
                failed_port = _local_port(failed)
                after = client.get(f"{API}/health")
                after_port = _local_port(after)
            assert failed.status_code == 500, failed.text
            body = failed.json()
            assert body["error"] == "internal" and "incident" in body["detail"], body
            incident = body["detail"].rsplit(" ", 1)[-1]
            assert after.status_code == 200, after.text
            assert after_port == failed_port, "the server closed the connection after the 500"
        finally:
            stop_process(server)
        logged = log.read_text()
        # one error record (ours), not a second from uvicorn ("ERROR:    Exception in ASGI application")
        errors = [line for line in logged.splitlines() if line.startswith("ERROR:") or " ERROR " in line]
        assert len(errors) == 1, logged
        assert f"incident {incident}" in logged and "tags" in logged, logged
