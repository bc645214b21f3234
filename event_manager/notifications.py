"""Notifications: events matched to subscriptions, written to an outbox in the event's own transaction, sent by a
dispatcher that may die anywhere.

Writing: `write_outbox` runs in the same flush hook that INSERTs the events (event_manager.service), so an outbox
row commits or rolls back with its event. Subscriptions are matched there from a per-process cache refreshed every
SUBSCRIPTIONS_CACHE_S (one small SELECT per period, not per event: the connect path stays as cheap as before); a
subscription created moments ago sees events from then on, at most SUBSCRIPTIONS_CACHE_S later.

Sending (`Dispatcher.run_once`), in three short transactions around the send:
1. claim: pending rows that are due are locked `FOR UPDATE SKIP LOCKED` (Postgres; SQLite has one writer) and
   grouped per (subscription, code); a group is taken only once its oldest row has waited `gather_s`, so a burst
   of one code becomes ONE merged message. The group's rows become `sending` with a lease and a batch key, the
   message's idempotency key (kept across retries).
2. send, outside any transaction (SMTP and HTTP cannot join one).
3. record: `sent`, or back to `pending` with an exponential backoff (`failed` after MAX_ATTEMPTS).

At-least-once, with the idempotency key to dedupe: a dispatcher killed before step 2 leaves rows pending or
sending; the next one (after a restart, or another manager) takes them up when the lease runs out, and the message
goes out once. Killed DURING step 2 (the peer accepted the message, the `sent` mark never committed), the message is
sent again after the lease with the SAME key (webhook header X-VDI-Idempotency-Key, mail header
X-VDI-Idempotency-Key): exactly-once is impossible without a transactional peer, so we choose never losing a
notification over never repeating one, and give the receiver what it needs to drop the repeat.
"""
from __future__ import annotations

import datetime as dt
import fnmatch
import hashlib
import hmac
import json
import logging
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx
from sqlalchemy import insert, select, update
from sqlalchemy.engine import Connection

from core.enums import Severity
from core.errors import Invalid
from manager import db
from manager.models import NotificationOutbox, NotificationSubscription, TagAssignment, utcnow

log = logging.getLogger("vdi.notifications")

RANK = {Severity.NORMAL: 0, Severity.WARNING: 1, Severity.ERROR: 2, Severity.ALERT: 3}
WEBHOOK_SCHEMES = {"json": "http", "jsons": "https"}
SUBSCRIPTIONS_CACHE_S = 2.0
MAX_ATTEMPTS = 10
BACKOFF_BASE_S = 5.0
BACKOFF_MAX_S = 3600.0
MERGED_LINES = 20  # a merged message lists this many events, then counts the rest
SIGNATURE_HEADER = "X-VDI-Signature"
IDEMPOTENCY_HEADER = "X-VDI-Idempotency-Key"


# ---- matching ---------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Rule:
    id: str
    code_pattern: str
    min_rank: int
    scope_kind: str
    scope_id: str

    def matches(self, event: dict[str, Any]) -> bool:
        """Code and severity, and a pool or host scope (a tag scope is checked when sending: it needs a query)."""
        if RANK[Severity(event["severity"])] < self.min_rank or not fnmatch.fnmatchcase(event["code"],
                                                                                       self.code_pattern):
            return False
        if self.scope_kind in ("pool", "host", "user"):
            return event.get(f"{self.scope_kind}_id") == self.scope_id
        return True


_cache: dict[str, tuple[float, list[Rule]]] = {}
_cache_lock = threading.Lock()


def invalidate_cache() -> None:
    with _cache_lock:
        _cache.clear()


def _rules(conn: Connection) -> list[Rule]:
    key = str(conn.engine.url)
    with _cache_lock:
        hit = _cache.get(key)
    if hit and time.monotonic() - hit[0] < SUBSCRIPTIONS_CACHE_S:
        return hit[1]
    sub = NotificationSubscription.__table__.c
    # The events may be written in a pipelined commit (the broker's connect, db.commit_in_route): read outside it.
    with db.answers_needed(conn):
        rules = [Rule(r.id, r.code_pattern, RANK[Severity(r.min_severity)], r.scope_kind, r.scope_id)
                 for r in conn.execute(select(sub.id, sub.code_pattern, sub.min_severity, sub.scope_kind,
                                              sub.scope_id).where(sub.enabled.is_(True)))]
    with _cache_lock:
        _cache[key] = (time.monotonic(), rules)
    return rules


SUBJECT_FIELDS = ("user_id", "desktop_id", "host_id", "pool_id", "template_id", "job_id")


def write_outbox(conn: Connection, events: list[dict[str, Any]]) -> None:
    """One outbox row per (event, matching subscription), in the events' transaction."""
    rules = _rules(conn)
    if not rules:
        return
    now = utcnow()
    rows = [{"idem_key": str(uuid.uuid4()), "subscription_id": rule.id, "created_at": now,
             "event_time": ev["time"], "code": ev["code"], "severity": ev["severity"], "message": ev["message"],
             "subject": json.dumps({k: ev[k] for k in SUBJECT_FIELDS if ev.get(k)}), "state": "pending",
             "attempts": 0, "next_attempt_at": now, "batch_key": "", "last_error": ""}
            for ev in events for rule in rules if rule.matches(ev)]
    if rows:
        conn.execute(_INSERT_OUTBOX, rows)


# Inline, as the events' INSERT: no RETURNING of the new ids (nobody reads them), so it can run in a pipelined commit.
_INSERT_OUTBOX = insert(NotificationOutbox.__table__).inline()


# ---- channel URLs -------------------------------------------------------------------------------------------------
def check_url(url: str) -> str:
    """The URL's redacted form (no password, token, path or query), or Invalid when no channel understands it."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise Invalid(f"url: not a URL ({exc})") from None
    if parts.scheme in WEBHOOK_SCHEMES:
        if not parts.hostname:
            raise Invalid(f"{parts.scheme}:// needs a host, e.g. {parts.scheme}://hooks.example.com/path")
    else:
        import apprise

        try:
            plugin = apprise.Apprise.instantiate(url)
        except Exception:  # a plugin's parser refusing odd input: the same answer as an unknown URL
            plugin = None
        if plugin is None:
            raise Invalid(f"no notification service understands this URL (scheme {parts.scheme!r}): see "
                          "Apprise's URL formats, e.g. mailto://user:password@example.com")
    host = parts.hostname or ""
    if port:
        host += f":{port}"
    user = f"{parts.username}{':***' if parts.password else ''}@" if parts.username else ""
    return urlunsplit((parts.scheme, user + host, "/***" if parts.path.strip("/") else "",
                       "***" if parts.query else "", ""))


def sign(secret: str, body: bytes) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


# ---- sending ------------------------------------------------------------------------------------------------------
@dataclass
class Batch:
    key: str
    subscription_id: str
    code: str
    ids: list[int]


def message(code: str, rows: list[Any]) -> tuple[str, str, dict[str, Any]]:
    """Title, text body and JSON document of one (possibly merged) notification."""
    worst = max((Severity(r.severity) for r in rows), key=RANK.__getitem__)
    title = f"[VDI {worst.value}] {code}" + (f" ({len(rows)} events)" if len(rows) > 1 else "")
    lines = [f"{r.event_time.isoformat()} {r.message}" for r in rows[:MERGED_LINES]]
    if len(rows) > MERGED_LINES:
        lines.append(f"... and {len(rows) - MERGED_LINES} more {code} events")
    doc = {"code": code, "severity": worst.value, "count": len(rows),
           "first": rows[0].event_time.isoformat(), "last": rows[-1].event_time.isoformat(),
           "events": [{"time": r.event_time.isoformat(), "severity": Severity(r.severity).value,
                       "message": r.message, **json.loads(r.subject or "{}")} for r in rows[:MERGED_LINES]]}
    return title, "\n".join(lines), doc


def deliver(url: str, secret: str, key: str, title: str, body: str, doc: dict[str, Any]) -> None:
    """Send one message; raises on failure (the error text never contains the URL)."""
    parts = urlsplit(url)
    if parts.scheme in WEBHOOK_SCHEMES:
        payload = json.dumps({"idempotency_key": key, "title": title, "body": body, **doc}).encode()
        target = urlunsplit((WEBHOOK_SCHEMES[parts.scheme], parts.netloc.rsplit("@", 1)[-1], parts.path or "/",
                             parts.query, ""))
        headers = {"Content-Type": "application/json", IDEMPOTENCY_HEADER: key, SIGNATURE_HEADER: sign(secret, payload)}
        try:
            answer = httpx.post(target, content=payload, headers=headers, timeout=10.0)
        except httpx.HTTPError as exc:
            raise RuntimeError(f"webhook unreachable: {type(exc).__name__}") from None
        if answer.status_code >= 300:
            raise RuntimeError(f"webhook answered {answer.status_code}")
        return
    import apprise

    plugin = apprise.Apprise.instantiate(url)
    if plugin is None:
        raise RuntimeError("the channel URL is no longer understood")
    if isinstance(getattr(plugin, "headers", None), dict):
        plugin.headers[IDEMPOTENCY_HEADER] = key  # e-mail: a header of its own (Apprise sets the Message-ID)
    notifier = apprise.Apprise()
    notifier.add(plugin)
    if not notifier.notify(title=title, body=body):
        raise RuntimeError(f"{parts.scheme}:// delivery failed (see the 'apprise' log)")


class Dispatcher:
    """Claims due outbox rows, sends them merged per (subscription, code), records the outcome."""

    def __init__(self, *, gather_s: float = 5.0, lease_s: float = 60.0, limit: int = 5000) -> None:
        self.gather_s, self.lease_s, self.limit = gather_s, lease_s, limit

    def claim(self) -> list[Batch]:
        o = NotificationOutbox
        now = utcnow()
        with db.session_scope() as session:
            # a dispatcher that died while sending: its rows are due again, with the same batch key
            session.execute(update(o).where(o.state == "sending", o.lease_until < now)
                            .values(state="pending", lease_until=None))
            rows = session.execute(select(o.id, o.subscription_id, o.code, o.created_at, o.batch_key)
                                   .where(o.state == "pending", o.next_attempt_at <= now).order_by(o.id)
                                   .limit(self.limit).with_for_update(skip_locked=True)).all()
            groups: dict[tuple, list] = {}
            for row in rows:
                groups.setdefault((row.batch_key,) if row.batch_key else (row.subscription_id, row.code),
                                  []).append(row)
            batches = []
            gathered = now - dt.timedelta(seconds=self.gather_s)
            for group in groups.values():
                if not group[0].batch_key and min(r.created_at for r in group) > gathered:
                    continue  # still gathering a burst
                key = group[0].batch_key or str(uuid.uuid4())
                ids = [r.id for r in group]
                session.execute(update(o).where(o.id.in_(ids)).values(
                    state="sending", batch_key=key, lease_until=now + dt.timedelta(seconds=self.lease_s)))
                batches.append(Batch(key, group[0].subscription_id, group[0].code, ids))
        return batches

    def send(self, batch: Batch) -> bool:
        from manager.node_secrets import open_sealed

        o = NotificationOutbox
        with db.session_scope() as session:
            sub = session.get(NotificationSubscription, batch.subscription_id)
            rows = session.scalars(select(o).where(o.id.in_(batch.ids)).order_by(o.id)).all()
            if sub is not None and sub.scope_kind == "tag":
                tagged = set(session.scalars(select(TagAssignment.object_id)
                                             .where(TagAssignment.tag_id == sub.scope_id)))
                kept = [r for r in rows if tagged & set(json.loads(r.subject or "{}").values())]
                dropped = [r.id for r in rows if r not in kept]
                if dropped:
                    session.execute(update(o).where(o.id.in_(dropped)).values(state="skipped", lease_until=None))
                rows = kept
            if sub is None or not sub.enabled or not rows:
                session.execute(update(o).where(o.id.in_(batch.ids), o.state == "sending")
                                .values(state="skipped", lease_until=None))
                return False
            what = f"the notification channel {sub.name}"
            url, secret = open_sealed(sub.url_sealed, what), open_sealed(sub.secret_sealed, what)
            title, body, doc = message(batch.code, rows)
            attempts = max(r.attempts for r in rows)
        try:
            deliver(url, secret, batch.key, title, body, doc)
        except Exception as exc:  # any channel failure: retried with backoff
            error = str(exc) if isinstance(exc, RuntimeError) else type(exc).__name__
            wait = min(BACKOFF_BASE_S * 2 ** attempts, BACKOFF_MAX_S)
            with db.session_scope() as session:
                session.execute(update(o).where(o.id.in_(batch.ids)).values(
                    state="failed" if attempts + 1 >= MAX_ATTEMPTS else "pending", attempts=attempts + 1,
                    lease_until=None, last_error=error[:500],
                    next_attempt_at=utcnow() + dt.timedelta(seconds=wait)))
            log.warning("notification %s (%s, %d events) failed: %s; retried in %.0f s", batch.key, batch.code,
                        len(batch.ids), error, wait)
            return False
        with db.session_scope() as session:
            session.execute(update(o).where(o.id.in_(batch.ids)).values(state="sent", sent_at=utcnow(),
                                                                        lease_until=None, attempts=attempts + 1))
        log.info("notification %s sent: %s, %d events", batch.key, batch.code, len(batch.ids))
        return True

    def run_once(self) -> int:
        return sum(self.send(b) for b in self.claim())


class DispatcherThread:
    """The dispatcher as a daemon thread of `vdi serve` (every manager runs one; SKIP LOCKED and the leases keep
    them from sending a row twice)."""

    def __init__(self, dispatcher: Dispatcher, poll_s: float) -> None:
        self.dispatcher, self.poll_s = dispatcher, poll_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="vdi-notifications", daemon=True)

    def start(self) -> "DispatcherThread":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=15)

    def _loop(self) -> None:
        while not self._stop.wait(self.poll_s):
            try:
                self.dispatcher.run_once()
            except Exception:  # the database away for a moment: try again next period
                log.exception("notification dispatch round failed")
