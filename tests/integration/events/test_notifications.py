"""Notifications against real peers (issue 17 item 3): an aiosmtpd SMTP server, a real HTTP webhook receiver, the
outbox in real Postgres, and a real `vdi serve` killed between an event's commit and its delivery."""
from __future__ import annotations

import hashlib
import hmac
import json
import threading
from email import message_from_bytes
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from sqlalchemy import func, select

pytestmark = pytest.mark.postgres

HOST_FAILED = "host.non_responsive"  # what ha_manager/liveness.py emits when a host fails


class Mailbox:
    def __init__(self) -> None:
        self.messages: list = []

    async def handle_DATA(self, server, session, envelope):  # aiosmtpd's handler hook
        self.messages.append(message_from_bytes(envelope.content))
        return "250 OK"


@pytest.fixture
def smtp():
    from aiosmtpd.controller import Controller
    from aiosmtpd.smtp import AuthResult

    from manager.embedded_nodes import free_port

    box = Mailbox()
    box.logins = []

    def authenticator(server, session, envelope, mechanism, auth_data):
        box.logins.append((auth_data.login, auth_data.password))
        return AuthResult(success=auth_data.password == b"s3cret-pass")

    controller = Controller(box, hostname="127.0.0.1", port=free_port(), authenticator=authenticator,
                            auth_require_tls=False)
    controller.start()
    box.port = controller.port
    yield box
    controller.stop()


class Webhook:
    def __init__(self) -> None:
        self.received: list[tuple[dict, bytes]] = []
        self.fail_next = 0
        received, hook = self.received, self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                if hook.fail_next:
                    hook.fail_next -= 1
                    self.send_response(503)
                else:
                    received.append(({k.lower(): v for k, v in self.headers.items()}, body))
                    self.send_response(204)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


@pytest.fixture
def webhook():
    hook = Webhook()
    yield hook
    hook.server.shutdown()
    hook.server.server_close()


@pytest.fixture
def settings_env(monkeypatch, settings_env):
    """The app's own dispatcher thread stays idle: these tests run the dispatcher themselves, one round at a time."""
    from manager.config import get_settings

    monkeypatch.setenv("VDI_NOTIFY_POLL_SECONDS", "60")
    get_settings.cache_clear()
    yield get_settings()
    get_settings.cache_clear()


def _dispatch(gather_s: float = 0.0) -> int:
    from event_manager.notifications import Dispatcher

    return Dispatcher(gather_s=gather_s).run_once()


def _emit(code: str, n: int = 1, **fields) -> None:
    from core.enums import Severity
    from event_manager.service import emit
    from manager import db

    fields.setdefault("severity", Severity.ALERT)
    with db.session_scope() as session:
        for i in range(n):
            emit(session, code, f"{code} #{i}", actor="ha", **fields)


def _emit_each_host(code: str, n: int) -> None:
    """`n` events of `code`, one per host (flood suppression is per code and object: these are all recorded)."""
    from event_manager.service import emit
    from manager import db

    with db.session_scope() as session:
        for i in range(n):
            emit(session, code, f"host h-{i} is connecting", actor="ha", host_id=f"h-{i}")


def _subscribe(client, **body) -> dict:
    from event_manager.notifications import invalidate_cache

    answer = client.post("/api/v1/notifications/subscriptions", json=body)
    assert answer.status_code == 201, answer.text
    invalidate_cache()  # the cache is per process: the test's emit shares this one
    return answer.json()


def _pools(*names: str) -> list[str]:
    from manager import db
    from manager.models import Pool, Template

    with db.session_scope() as session:
        tpl = Template(name="notify-tpl")
        session.add(tpl)
        session.flush()
        pools = [Pool(name=n, template_id=tpl.id) for n in names]
        session.add_all(pools)
        session.flush()
        return [p.id for p in pools]


def _verify(secret: str, headers: dict, body: bytes) -> bool:
    expected = "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(headers["x-vdi-signature"], expected)


def test_host_failure_mail_reaches_an_smtp_server(client, smtp):
    url = f"mailto://vdi:s3cret-pass@127.0.0.1:{smtp.port}?from=vdi@example.com&to=ops@example.com&mode=insecure"
    sub = _subscribe(client, name="ops mail", url=url, code_pattern="host.*", min_severity="error", channel=True)
    assert "s3cret-pass" not in json.dumps(sub) and "s3cret-pass" not in client.get(
        f"/api/v1/notifications/subscriptions/{sub['id']}").text
    _emit(HOST_FAILED, host_id="h-1")
    _emit("host.recovered", severity="normal", host_id="h-1")  # below the subscription's severity
    assert _dispatch() == 1
    assert len(smtp.messages) == 1 and smtp.logins == [(b"vdi", b"s3cret-pass")]
    mail = smtp.messages[0]
    assert HOST_FAILED in mail["Subject"] and mail["To"] == "ops@example.com"
    assert mail["X-VDI-Idempotency-Key"]
    assert _dispatch() == 0 and len(smtp.messages) == 1  # sent is sent


def test_webhook_body_is_signed_and_verifies(client, webhook):
    sub = _subscribe(client, name="hook", url=f"json://127.0.0.1:{webhook.port}/vdi", code_pattern="host.non_*")
    secret = sub["webhook_secret"]
    assert secret and client.get(f"/api/v1/notifications/subscriptions/{sub['id']}").json()["webhook_secret"] is None
    _emit(HOST_FAILED, host_id="h-2")
    _emit("desktop.ha_restarted", host_id="h-2")  # another code: not matched
    assert _dispatch() == 1
    [(headers, body)] = webhook.received
    assert _verify(secret, headers, body)
    assert not _verify("another-secret", headers, body)
    doc = json.loads(body)
    assert doc["code"] == HOST_FAILED and doc["count"] == 1 and doc["events"][0]["host_id"] == "h-2"
    assert doc["idempotency_key"] == headers["x-vdi-idempotency-key"]


def test_pool_scope_receives_nothing_about_another_pool(client, webhook):
    mine, other = _pools("pool-a", "pool-b")
    _subscribe(client, name="pool a", url=f"json://127.0.0.1:{webhook.port}/a", code_pattern="*",
               min_severity="normal", scope_kind="pool", scope_id=mine)
    _emit("pool.resized", severity="normal", pool_id=other)
    assert _dispatch() == 0 and webhook.received == []
    _emit("pool.resized", severity="normal", pool_id=mine)
    assert _dispatch() == 1
    assert [json.loads(b)["events"][0]["pool_id"] for _, b in webhook.received] == [mine]


def test_tag_scope_takes_only_events_about_tagged_objects(client, webhook):
    from manager import db
    from manager.models import Tag, TagAssignment

    with db.session_scope() as session:
        tag = Tag(name="finance")
        session.add(tag)
        session.flush()
        session.add(TagAssignment(tag_id=tag.id, object_kind="desktop", object_id="d-tagged"))
        tag_id = tag.id
    _subscribe(client, name="finance", url=f"json://127.0.0.1:{webhook.port}/tag", code_pattern="desktop.*",
               scope_kind="tag", scope_id=tag_id)
    _emit("desktop.start_failed", desktop_id="d-other")
    _emit("desktop.start_failed", desktop_id="d-tagged")
    assert _dispatch() == 1
    [(_, body)] = webhook.received
    doc = json.loads(body)
    assert doc["count"] == 1 and doc["events"][0]["desktop_id"] == "d-tagged"


def test_a_burst_of_one_code_is_one_message_per_subscription(client, webhook, smtp):
    _subscribe(client, name="hook", url=f"json://127.0.0.1:{webhook.port}/burst", code_pattern="host.*")
    _subscribe(client, name="mail", url=f"mailto://127.0.0.1:{smtp.port}?from=a@example.com&to=b@example.com",
               code_pattern="*", channel=True)
    _emit_each_host("host.suspected", 1000)
    assert _dispatch() == 2
    [(headers, body)] = webhook.received
    doc = json.loads(body)
    assert doc["count"] == 1000 and len(doc["events"]) == 20
    assert len(smtp.messages) == 1 and "1000 events" in smtp.messages[0]["Subject"]


def test_failed_delivery_is_retried_with_the_same_key(client, webhook, db_session):
    from manager.models import NotificationOutbox

    _subscribe(client, name="hook", url=f"json://127.0.0.1:{webhook.port}/retry", code_pattern="host.*")
    webhook.fail_next = 1
    _emit(HOST_FAILED, host_id="h-4")
    assert _dispatch() == 0
    row = db_session.scalars(select(NotificationOutbox)).one()
    assert row.state == "pending" and row.attempts == 1 and "503" in row.last_error
    key = row.batch_key
    db_session.execute(NotificationOutbox.__table__.update().values(next_attempt_at=row.created_at))
    db_session.commit()
    assert _dispatch() == 1
    [(headers, _)] = webhook.received
    assert headers["x-vdi-idempotency-key"] == key


def test_subscriptions_are_read_in_a_pipelined_commit(client, webhook):
    """The broker's connect writes its events in a pipelined commit (db.commit_in_route). When the subscriptions
    cache has run out there, reading them must still work (in pipeline mode a query's rows arrive only at the
    sync: the login storm's connects failed with ResourceClosedError every time the cache ran out), and the
    statements sent before the read and after it commit together."""
    from event_manager.notifications import invalidate_cache
    from event_manager.service import emit
    from manager import db
    from manager.models import Event, NotificationOutbox, Pool, Template

    _subscribe(client, name="hook", url=f"json://127.0.0.1:{webhook.port}/pipe", code_pattern="pool.*",
               min_severity="normal")
    session = db.new_session()
    try:
        session.connection()
        with db.commit_in_route(session, pipelined=True):
            tpl = Template(name="pipe-tpl")
            session.add(tpl)
            session.flush()  # sent in the pipeline, before the read
            session.add(Pool(name="pipe-pool", template_id=tpl.id))
            emit(session, "pool.resized", "pool pipe-pool resized", pool_id="p-pipe")
            invalidate_cache()  # the cache runs out now: the commit's event hook reads the subscriptions
    finally:
        session.close()
    with db.session_scope() as check:
        assert check.scalar(select(func.count()).select_from(Pool).where(Pool.name == "pipe-pool")) == 1
        assert check.scalars(select(Event.code).where(Event.pool_id == "p-pipe")).all() == ["pool.resized"]
        assert check.scalars(select(NotificationOutbox.code)).all() == ["pool.resized"]


def test_rolled_back_event_sends_nothing(client, webhook):
    from event_manager.service import emit
    from manager import db
    from manager.models import NotificationOutbox

    _subscribe(client, name="hook", url=f"json://127.0.0.1:{webhook.port}/rb", code_pattern="*")
    session = db.new_session()
    emit(session, HOST_FAILED, "never happened", severity="alert")
    session.flush()
    session.rollback()
    session.close()
    with db.session_scope() as check:
        assert check.scalar(select(func.count()).select_from(NotificationOutbox)) == 0
    assert _dispatch() == 0 and webhook.received == []


def test_subscriptions_api_permissions_and_redaction(client, app, webhook):
    from manager import db
    from manager.auth import issue_token
    from manager.models import User

    with db.session_scope() as session:
        user = User(username="plain", domain="local")
        session.add(user)
        session.flush()
        token = issue_token(session, user, name="t")
    plain = {"Authorization": f"Bearer {token}"}
    url = f"json://hookuser:hookpass@127.0.0.1:{webhook.port}/path/secret-token?x=1"
    answer = client.post("/api/v1/notifications/subscriptions", headers=plain,
                         json={"name": "c", "url": url, "channel": True})
    assert answer.status_code == 403
    mine = client.post("/api/v1/notifications/subscriptions", headers=plain, json={"name": "mine", "url": url})
    assert mine.status_code == 201, mine.text
    out = mine.json()
    assert out["scope_kind"] == "user" and out["owner_id"] == user.id
    for secret in ("hookpass", "secret-token"):
        assert secret not in out["url_redacted"]
    channel = _subscribe(client, name="ops", url=url, channel=True)
    listed = client.get("/api/v1/notifications/subscriptions", headers=plain).json()
    assert [s["id"] for s in listed] == [out["id"]]
    assert client.get(f"/api/v1/notifications/subscriptions/{channel['id']}", headers=plain).status_code == 404
    assert client.delete(f"/api/v1/notifications/subscriptions/{channel['id']}", headers=plain).status_code == 404
    bad = client.post("/api/v1/notifications/subscriptions", json={"name": "x", "url": "nosuch://x"})
    assert bad.status_code == 422 and "nosuch" in bad.json()["detail"]
    bad = client.post("/api/v1/notifications/subscriptions",
                      json={"name": "x", "url": url, "scope_kind": "pool", "scope_id": "missing"})
    assert bad.status_code == 422
    assert client.patch(f"/api/v1/notifications/subscriptions/{out['id']}", headers=plain,
                        json={"enabled": False}).json()["enabled"] is False


def test_a_manager_killed_before_delivery_delivers_once_after_restart(pg_url, clean_db, tmp_path, webhook):
    """SIGKILL of the `vdi serve` that would deliver, between the event's commit and its delivery: the restarted
    manager sends the notification, once."""
    from event_manager.notifications import invalidate_cache
    from manager import db
    from manager.models import NotificationOutbox
    from tests.harness.managers import manager_group, wait_for

    env = {"VDI_NOTIFY_GATHER_SECONDS": "3", "VDI_NOTIFY_POLL_SECONDS": "0.2", "VDI_NOTIFY_LEASE_SECONDS": "5"}
    with manager_group(pg_url, tmp_path / "managers", names=("m1",), env=env) as group:
        answer = group.api("m1", "POST", "/notifications/subscriptions",
                           json={"name": "hook", "url": f"json://127.0.0.1:{webhook.port}/k", "code_pattern": "host.*"})
        assert answer.status_code == 201, answer.text
        secret = answer.json()["webhook_secret"]
        invalidate_cache()
        _emit(HOST_FAILED, host_id="h-killed")  # committed; the manager gathers it for 3 s before sending
        group.kill("m1")
        with db.session_scope() as session:
            assert [r.state for r in session.scalars(select(NotificationOutbox))] == ["pending"]
        assert webhook.received == []
        group.start("m1")
        wait_for("the notification after the restart", lambda: webhook.received)
        _emit("host.suspected", host_id="h-later")  # sent after the first: by then a repeat would have gone too
        wait_for("the later notification", lambda: len(webhook.received) >= 2)
    codes = [json.loads(body)["code"] for _, body in webhook.received]
    assert codes == [HOST_FAILED, "host.suspected"]
    assert all(_verify(secret, headers, body) for headers, body in webhook.received)
    with db.session_scope() as session:
        assert {r.state for r in session.scalars(select(NotificationOutbox))} == {"sent"}


def test_a_dispatcher_killed_while_sending_resends_with_the_same_key(client, webhook, db_session):
    """The other side of at-least-once: rows left `sending` by a dispatcher that died mid-send go out again once
    their lease ends, under the SAME idempotency key, so the receiver can drop the repeat."""
    import datetime as dt

    from event_manager.notifications import Dispatcher
    from manager.models import NotificationOutbox

    _subscribe(client, name="hook", url=f"json://127.0.0.1:{webhook.port}/lease", code_pattern="host.*")
    _emit(HOST_FAILED, host_id="h-5")
    [claimed] = Dispatcher(gather_s=0).claim()  # claimed, then the process "dies" before recording anything
    assert _dispatch() == 0  # the lease holds: nobody else sends it
    db_session.execute(NotificationOutbox.__table__.update().values(
        lease_until=dt.datetime.now(dt.timezone.utc) - dt.timedelta(seconds=1)))
    db_session.commit()
    assert _dispatch() == 1
    [(headers, _)] = webhook.received
    assert headers["x-vdi-idempotency-key"] == claimed.key


@pytest.mark.redis
def test_a_celery_worker_killed_before_delivery_delivers_once_after_restart(client, settings_env, pg_url, webhook,
                                                                            tmp_path):
    """The Celery set-up: `vdi worker` processes dispatch notifications too. SIGKILL the only one between the
    event's commit and its delivery; the restarted worker sends it, once."""
    import os
    import subprocess
    import sys
    import uuid

    from event_manager.notifications import invalidate_cache
    from manager import db
    from manager.models import NotificationOutbox
    from tests.conftest import REDIS_URL
    from tests.harness.managers import wait_for
    from tests.harness.processes import kill_process_tree

    env = {**os.environ, "VDI_REDIS_URL": REDIS_URL, "VDI_DATABASE_URL": pg_url,
           "VDI_DATA_DIR": str(settings_env.data_dir), "VDI_NOTIFY_GATHER_SECONDS": "3",
           "VDI_NOTIFY_POLL_SECONDS": "0.2", "VDI_NOTIFY_LEASE_SECONDS": "5"}

    def start_worker() -> subprocess.Popen:
        with open(tmp_path / "worker.log", "ab") as log:
            return subprocess.Popen([sys.executable, "-m", "manager.cli", "worker", "--concurrency", "1",
                                     "--hostname", f"notify-{uuid.uuid4().hex[:6]}@localhost"], env=env,
                                    stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)

    sub = _subscribe(client, name="hook", url=f"json://127.0.0.1:{webhook.port}/w", code_pattern="host.*")
    worker = start_worker()
    try:
        invalidate_cache()
        _emit(HOST_FAILED, host_id="h-worker")  # committed; gathered for 3 s before it is sent
        kill_process_tree(worker)
        with db.session_scope() as session:
            assert [r.state for r in session.scalars(select(NotificationOutbox))] in (["pending"], ["sending"])
        assert webhook.received == []
        worker = start_worker()
        wait_for("the notification from the restarted worker", lambda: webhook.received)
        _emit("host.suspected", host_id="h-after")
        wait_for("the later notification", lambda: len(webhook.received) >= 2)
    finally:
        kill_process_tree(worker)
    assert [json.loads(body)["code"] for _, body in webhook.received] == [HOST_FAILED, "host.suspected"]
    assert all(_verify(sub["webhook_secret"], headers, body) for headers, body in webhook.received)
