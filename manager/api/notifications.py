"""Notification subscriptions: a user's own (events about themselves, unless they may read every event) and the
channels an administrator sets up (permission notifications:write). Channel URLs are never shown back: replies
carry `url_redacted`; a webhook's signing secret is in the reply that creates it, and nowhere else."""
from __future__ import annotations

import datetime as dt
import secrets
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Response
from pydantic import Field
from sqlalchemy import or_, select

from core.enums import Severity
from core.errors import Forbidden, Invalid, NotFound
from event_manager.notifications import WEBHOOK_SCHEMES, check_url, invalidate_cache
from manager import db
from manager.api import schemas as s
from manager.api.common import DbSession
from manager.auth import Principal, require
from manager.models import Host, NotificationSubscription, Pool, Tag
from manager.node_secrets import seal

router = APIRouter(tags=["notifications"])
Caller = Annotated[Principal, Depends(require("self:read"))]
CHANNELS = "notifications:write"
Scope = Literal["", "pool", "host", "tag"]


class SubscriptionIn(s.In):
    name: Annotated[str, Field(min_length=1, max_length=255)]
    url: Annotated[str, Field(min_length=3, max_length=2048)] = Field(
        description="an Apprise URL (mailto://, mailtos://, ...) or json:// / jsons:// for a webhook signed with "
                    "HMAC-SHA256 (header X-VDI-Signature: sha256=<hex>)")
    code_pattern: Annotated[str, Field(min_length=1, max_length=128)] = Field(
        default="*", description="event codes, as a glob: host.*, desktop.ha_*")
    min_severity: Severity = Severity.WARNING
    scope_kind: Scope = Field(default="", description="only events about this pool, host or tagged object")
    scope_id: Annotated[str, Field(max_length=36)] = ""
    channel: bool = Field(default=False, description="an administrator's channel rather than your own "
                                                      "subscription (needs notifications:write)")
    enabled: bool = True


class SubscriptionPatch(s.In):
    name: Annotated[str, Field(min_length=1, max_length=255)] | None = None
    url: Annotated[str, Field(min_length=3, max_length=2048)] | None = None
    code_pattern: Annotated[str, Field(min_length=1, max_length=128)] | None = None
    min_severity: Severity | None = None
    enabled: bool | None = None


class SubscriptionOut(s.Out):
    id: str
    name: str
    owner_id: str | None = Field(description="null for an administrator's channel")
    code_pattern: str
    min_severity: Severity
    scope_kind: str = Field(description="pool, host, tag, or user (a user's own subscription without "
                                        "events:read: events about that user only)")
    scope_id: str
    url_redacted: str
    enabled: bool
    created_at: dt.datetime
    webhook_secret: str | None = Field(default=None, description="the HMAC key of a json:// webhook: in the "
                                                                 "reply that creates it, never again")


def _scope_exists(session, kind: str, ident: str) -> None:
    model = {"pool": Pool, "host": Host, "tag": Tag}.get(kind)
    if model is None:
        if ident:
            raise Invalid("scope_id needs a scope_kind (pool, host or tag)")
        return
    if not ident or session.get(model, ident) is None:
        raise Invalid(f"scope_id: no {kind} with id {ident!r}")


def _visible(session, who: Principal, sub_id: str) -> NotificationSubscription:
    sub = session.get(NotificationSubscription, sub_id)
    if sub is None or not (sub.owner_id == who.user_id or (sub.owner_id is None and who.can(CHANNELS))):
        raise NotFound(kind="subscription", id=sub_id)
    return sub


def _changed(session) -> None:
    db.after_commit(session, invalidate_cache)


@router.get("/notifications/subscriptions", response_model=list[SubscriptionOut])
def list_subscriptions(session: DbSession, who: Caller) -> Any:
    """Your own subscriptions, and the channels too when you may manage them."""
    mine = NotificationSubscription.owner_id == who.user_id
    where = or_(mine, NotificationSubscription.owner_id.is_(None)) if who.can(CHANNELS) else mine
    rows = session.scalars(select(NotificationSubscription).where(where)
                           .order_by(NotificationSubscription.created_at).limit(1000))
    return [SubscriptionOut.model_validate(r) for r in rows]


@router.post("/notifications/subscriptions", response_model=SubscriptionOut, status_code=201)
def create_subscription(body: SubscriptionIn, session: DbSession, who: Caller) -> Any:
    """Subscribe to events (or, with `channel`, set up an administrator's channel)."""
    if body.channel and not who.can(CHANNELS):
        raise Forbidden("setting up a channel needs notifications:write; subscribe for yourself instead")
    redacted = check_url(body.url)
    scope_kind, scope_id = body.scope_kind, body.scope_id
    _scope_exists(session, scope_kind, scope_id)
    if not body.channel and not who.can("events:read"):
        if scope_kind:
            raise Invalid("your subscriptions are about your own events: scope_kind must be empty")
        scope_kind, scope_id = "user", who.user_id
    secret = secrets.token_urlsafe(32) if body.url.split(":", 1)[0] in WEBHOOK_SCHEMES else ""
    sub = NotificationSubscription(owner_id=None if body.channel else who.user_id, name=body.name,
                                   code_pattern=body.code_pattern, min_severity=body.min_severity,
                                   scope_kind=scope_kind, scope_id=scope_id, url_sealed=seal(body.url),
                                   url_redacted=redacted, secret_sealed=seal(secret) if secret else "",
                                   enabled=body.enabled)
    session.add(sub)
    session.flush()
    _changed(session)
    out = SubscriptionOut.model_validate(sub)
    out.webhook_secret = secret or None
    return out


@router.get("/notifications/subscriptions/{sub_id}", response_model=SubscriptionOut)
def get_subscription(sub_id: str, session: DbSession, who: Caller) -> Any:
    return SubscriptionOut.model_validate(_visible(session, who, sub_id))


@router.patch("/notifications/subscriptions/{sub_id}", response_model=SubscriptionOut)
def update_subscription(sub_id: str, body: SubscriptionPatch, session: DbSession, who: Caller) -> Any:
    """Change a subscription; a new `url` keeps the webhook's secret."""
    sub = _visible(session, who, sub_id)
    for name in ("name", "code_pattern", "min_severity", "enabled"):
        value = getattr(body, name)
        if value is not None:
            setattr(sub, name, value)
    if body.url is not None:
        sub.url_redacted = check_url(body.url)
        sub.url_sealed = seal(body.url)
        if body.url.split(":", 1)[0] in WEBHOOK_SCHEMES and not sub.secret_sealed:
            raise Invalid("this subscription has no webhook secret: create a new one for a json:// URL")
    session.flush()
    _changed(session)
    return SubscriptionOut.model_validate(sub)


@router.delete("/notifications/subscriptions/{sub_id}", status_code=204)
def delete_subscription(sub_id: str, session: DbSession, who: Caller) -> Response:
    """Unsubscribe; messages not yet sent are dropped."""
    session.delete(_visible(session, who, sub_id))
    _changed(session)
    return Response(status_code=204)
