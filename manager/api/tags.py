"""Attach a tag to objects and detach it (the tags themselves are the CRUD resource /tags)."""
from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends
from pydantic import BaseModel, Field

from manager import tagging
from manager.api import schemas as s
from manager.api.common import DbSession
from manager.auth import Principal, require

router = APIRouter(tags=["tags"])
TagWriter = Annotated[Principal, Depends(require("tags:write"))]


class TagObjectsIn(s.In):
    kind: Literal[tuple(tagging.TAGGED_KINDS)] = Field(  # type: ignore[valid-type]
        description="what the ids name: " + ", ".join(tagging.TAGGED_KINDS))
    ids: list[s.Id] = Field(min_length=1, max_length=tagging.MAX_OBJECTS)


class TagObjectsOut(BaseModel):
    tag: str
    kind: str
    changed: int = Field(description="how many objects were newly tagged (attach) or untagged (detach)")
    ids: list[str] = Field(description="the objects asked for, each now tagged (attach) or not (detach)")


@router.post("/tags/{tag_id}/objects", response_model=TagObjectsOut)
def attach_tag(tag_id: str, payload: TagObjectsIn, session: DbSession, who: TagWriter) -> dict[str, Any]:
    """Tag objects; those already tagged stay so. An unknown id is a 422 naming it, and nothing changes."""
    return tagging.attach(session, tag_id, payload.kind, payload.ids, who)


@router.delete("/tags/{tag_id}/objects", response_model=TagObjectsOut)
def detach_tag(tag_id: str, payload: TagObjectsIn, session: DbSession, who: TagWriter) -> dict[str, Any]:
    """Untag objects; those without the tag stay so. An unknown id is a 422 naming it, and nothing changes."""
    return tagging.detach(session, tag_id, payload.kind, payload.ids, who)
