"""Tags on objects: attach a tag to desktops, hosts, templates or users, detach it, and read the tags of a page of
objects. The API's /tags/{id}/objects routes and the console's search results use these.

The kinds are those the search finds by tag (`Vms: tag = x`, `Hosts:`, `Templates:`, `Users:`; manager.search_fields
declares a `tag` field and a tag relation for each): a tag attached here is found there.
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from sqlalchemy import delete, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from core.errors import Invalid, NotFound
from event_manager.service import emit
from manager.auth import Principal
from manager.models import Desktop, Host, Tag, TagAssignment, Template, User

# kind -> (model, how an object of it is named in messages, the event column that links an event to it)
TAGGED_KINDS: dict[str, tuple[type, Any, str]] = {
    "desktop": (Desktop, Desktop.name, "desktop_id"),
    "host": (Host, Host.name, "host_id"),
    "template": (Template, Template.name, "template_id"),
    "user": (User, User.username + "@" + User.domain, "user_id"),
}
MAX_OBJECTS = 1000


def _listed(items: Sequence[str], limit: int = 10) -> str:
    return ", ".join(items[:limit]) + (f" and {len(items) - limit} more" if len(items) > limit else "")


def _objects(session: Session, kind: str, ids: Iterable[str]) -> dict[str, str]:
    """{id: name} of the given objects of `kind`, in the order given; Invalid (422) naming the ids that are none."""
    if kind not in TAGGED_KINDS:
        raise Invalid(f"kind: {kind!r} cannot be tagged; use one of: {', '.join(TAGGED_KINDS)}")
    wanted = list(dict.fromkeys(ids))
    if not 1 <= len(wanted) <= MAX_OBJECTS:
        raise Invalid(f"ids: give 1 to {MAX_OBJECTS} ids")
    model, label, _ = TAGGED_KINDS[kind]
    found = dict(session.execute(select(model.id, label).where(model.id.in_(wanted))).all())
    missing = [i for i in wanted if i not in found]
    if missing:
        raise Invalid(f"ids: no {kind} has the id {_listed(missing)}")
    return {i: found[i] for i in wanted}


def _tag(session: Session, tag_id: str) -> Tag:
    tag = session.get(Tag, tag_id)
    if tag is None:
        raise NotFound(kind="tag", id=tag_id)
    return tag


def _record(session: Session, who: Principal, code: str, message: str, kind: str, changed: dict[str, str]) -> None:
    """One event for the change; linked to the object when there is one (its page lists it)."""
    _, _, column = TAGGED_KINDS[kind]
    link = {column: next(iter(changed))} if len(changed) == 1 else {}
    emit(session, code, message[:4000], actor=who.name, **link)


def _named(kind: str, changed: dict[str, str]) -> str:
    return f"{kind} {_listed(list(changed.values()))}" if len(changed) == 1 else \
        f"{len(changed)} {kind}s: {_listed(list(changed.values()))}"


def attach(session: Session, tag_id: str, kind: str, ids: Iterable[str], who: Principal) -> dict[str, Any]:
    """Tag the objects (those already tagged stay as they are) and record `tag.attached` naming the newly tagged.
    Returns {"tag", "kind", "changed": how many were newly tagged, "ids": the objects now tagged}."""
    tag = _tag(session, tag_id)
    objects = _objects(session, kind, ids)
    already = set(session.scalars(select(TagAssignment.object_id).where(
        TagAssignment.tag_id == tag.id, TagAssignment.object_kind == kind,
        TagAssignment.object_id.in_(list(objects)))))
    new = {i: name for i, name in objects.items() if i not in already}
    if new:
        dialect = postgresql if session.get_bind().dialect.name == "postgresql" else sqlite
        # a concurrent attach of the same pair is no error: the row it wrote is the one wanted
        session.execute(dialect.insert(TagAssignment).values(
            [{"tag_id": tag.id, "object_kind": kind, "object_id": i} for i in new]).on_conflict_do_nothing())
        _record(session, who, "tag.attached", f"{who.name} tagged {_named(kind, new)} with {tag.name}", kind, new)
        session.flush()
    return {"tag": tag.name, "kind": kind, "changed": len(new), "ids": list(objects)}


def detach(session: Session, tag_id: str, kind: str, ids: Iterable[str], who: Principal) -> dict[str, Any]:
    """Untag the objects (those without the tag stay as they are) and record `tag.detached` naming the untagged."""
    tag = _tag(session, tag_id)
    objects = _objects(session, kind, ids)
    had = set(session.scalars(delete(TagAssignment).where(
        TagAssignment.tag_id == tag.id, TagAssignment.object_kind == kind,
        TagAssignment.object_id.in_(list(objects))).returning(TagAssignment.object_id)))
    removed = {i: name for i, name in objects.items() if i in had}
    if removed:
        _record(session, who, "tag.detached", f"{who.name} removed tag {tag.name} from {_named(kind, removed)}",
                kind, removed)
        session.flush()
    return {"tag": tag.name, "kind": kind, "changed": len(removed), "ids": list(objects)}


def forget(session: Session, kind: str, ids: Iterable[str]) -> None:
    """Remove every tag from objects of `kind` that are being deleted. An assignment names its object by kind and id,
    which no foreign key can follow, so each place that deletes taggable objects calls this in the same
    transaction (manager.api.crud for hosts, templates and users; manager.provisioning for desktops)."""
    if kind in TAGGED_KINDS:
        session.execute(delete(TagAssignment).where(TagAssignment.object_kind == kind,
                                                    TagAssignment.object_id.in_(list(ids)))
                        .execution_options(synchronize_session=False))


def tags_of(session: Session, kind: str, ids: Iterable[str]) -> dict[str, list[str]]:
    """{object id: its tags' names in order} for a page of objects of `kind`, in one query (untagged: absent)."""
    wanted = list(set(ids))
    out: dict[str, list[str]] = {}
    if kind not in TAGGED_KINDS or not wanted:
        return out
    rows = session.execute(select(TagAssignment.object_id, Tag.name).join(Tag, Tag.id == TagAssignment.tag_id)
                           .where(TagAssignment.object_kind == kind, TagAssignment.object_id.in_(wanted))
                           .order_by(Tag.name))
    for object_id, name in rows:
        out.setdefault(object_id, []).append(name)
    return out
