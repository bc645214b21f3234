"""One way to list, get, create, update and delete a resource.

`CrudResource` describes a model and its schemas; `crud_router` builds the five routes with the same paging,
validation of references (an unknown `*_id` is a 422 naming the field), uniqueness (409 `duplicate`), in-use
checks before delete (409 `in_use` naming the users) and an event for every change.
"""

import inspect
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request, Response
from pydantic import BaseModel
from sqlalchemy import Select, select
from sqlalchemy.orm import Session

from core.errors import BadRequest, DuplicateName, Invalid, NotFound
from event_manager.service import emit
from manager.api.common import DbSession, Page, PageParams, Paging, paginate
from manager.auth import Principal, require
from manager.models import Base
from manager.tagging import forget as forget_tags


def model_for_table(table_name: str) -> type:
    for mapper in Base.registry.mappers:
        if mapper.local_table.name == table_name:
            return mapper.class_
    raise KeyError(table_name)


def check_references(session: Session, model: type, values: dict[str, Any]) -> None:
    """Every foreign-key value in `values` must name an existing row: a clear 422 otherwise."""
    for column in model.__table__.columns:
        value = values.get(column.key)
        if value is None or not column.foreign_keys:
            continue
        target = model_for_table(next(iter(column.foreign_keys)).column.table.name)
        if session.get(target, value) is None:
            kind = target.__tablename__.rstrip("s").replace("_", " ")
            raise Invalid(f"{column.key}: {kind} {value} does not exist")


def check_unique(session: Session, model: type, kind: str, fields: tuple[str, ...], values: dict[str, Any],
                 exclude_id: Any = None) -> None:
    for name in fields:
        if values.get(name) is None:
            continue
        stmt = select(model.id).where(getattr(model, name) == values[name])
        if exclude_id is not None:
            stmt = stmt.where(model.id != exclude_id)
        if session.scalar(stmt.limit(1)) is not None:
            raise DuplicateName(kind=kind, name=values[name])


@dataclass
class CrudResource:
    path: str  # URL segment, e.g. "storage-domains"
    kind: str  # human name in messages and event codes, e.g. "storage domain"
    model: type
    out: type[BaseModel]
    create: type[BaseModel] | None
    update: type[BaseModel] | None
    read_permission: str
    write_permission: str
    sortable: tuple[str, ...] = ("name", "created_at")
    unique: tuple[str, ...] = ("name",)
    default_order: tuple[str, ...] = ("name",)
    # Hooks: turn the validated payload into column values (e.g. hash a password), refuse a delete (InUse), …
    prepare_create: Callable[[Session, dict[str, Any], Principal], dict[str, Any]] | None = None
    prepare_update: Callable[[Session, Any, dict[str, Any], Principal], dict[str, Any]] | None = None
    before_delete: Callable[[Session, Any], None] | None = None
    after_create: Callable[[Session, Any, Principal], None] | None = None
    # Checks of the change as a whole, after it is flushed (e.g. that an enabled SuperUser remains): raising one rolls
    # the request back. after_update gets the values that were set.
    after_update: Callable[[Session, Any, dict[str, Any]], None] | None = None
    after_delete: Callable[[Session, Any], None] | None = None
    created_out: type[BaseModel] | None = None  # a richer reply on creation (e.g. a one-time secret)
    list_filter: Callable[[Any, Principal], Any] | None = None
    # Objects the caller may not see are reported as missing (404), never as forbidden: no existence leaks.
    visible: Callable[[Any, Principal], bool] | None = None
    extra_event_fields: Callable[[Any], dict[str, Any]] = field(default=lambda obj: {})
    describe: Callable[[Any], str] | None = None  # how events name an object without a name (default: its id)
    # Exact-match filters of the list, declared per resource (GET /<path>?pool_id=...): only these columns, never
    # a column named by the client.
    filters: tuple[str, ...] = ()
    # Create, change and delete have routes of their own (desktops: jobs on their hosts); crud_router builds only
    # the list and get routes, while create_object/update_object/delete_object stay the one way to change rows.
    own_writes: bool = False

    @property
    def event_code(self) -> str:
        return self.kind.replace(" ", "_")

    def fetch(self, session: Session, obj_id: Any, who: Principal, *, lock: bool = False) -> Any:
        """The object, or NotFound. `lock`: lock its row until the transaction ends (FOR UPDATE): of two requests
        changing it at once, the second waits for the first, and finds it gone after a delete."""
        obj = session.get(self.model, obj_id, with_for_update=lock or None)
        if obj is None or (self.visible is not None and not self.visible(obj, who)):
            raise NotFound(kind=self.kind, id=obj_id)
        return obj

    def query(self, who: Principal, **match: Any) -> Select:
        """The rows GET /<path> lists to `who`, narrowed by declared exact-match filters (a None value: any)."""
        stmt = select(self.model)
        if self.list_filter is not None:
            stmt = self.list_filter(stmt, who)
        for name, value in match.items():
            if name not in self.filters:
                raise Invalid(f"{self.path} cannot be filtered by {name!r}; filters: "
                              f"{', '.join(self.filters) or 'none'}")
            if value is not None:
                stmt = stmt.where(getattr(self.model, name) == value)
        return stmt

    def list_page(self, session: Session, paging: PageParams, who: Principal, **match: Any) -> dict[str, Any]:
        """One page of GET /<path> (with its filters): the route and the console's pages call this."""
        return paginate(session, self.query(who, **match), paging, self.out,
                        sortable={name: getattr(self.model, name) for name in self.sortable},
                        default_order=[getattr(self.model, name) for name in self.default_order] + [self.model.id])

    def fetch_many(self, session: Session, ids: Iterable[Any], who: Principal) -> dict[Any, Any]:
        """The objects among `ids` that `who` may see (as `fetch` would give each), by id, in one query."""
        wanted = set(ids) - {None}
        if not wanted:
            return {}
        rows = session.scalars(self.query(who).where(self.model.id.in_(wanted)))
        return {obj.id: obj for obj in rows if self.visible is None or self.visible(obj, who)}

    def label(self, obj: Any) -> str:
        if self.describe is not None:
            return self.describe(obj)
        return getattr(obj, "name", None) or getattr(obj, "username", None) or str(obj.id)

    # The one create, update and delete of this resource: the routes below and the web console's pages call
    # these with a validated payload's values (`self.create` / `self.update` schemas) and the caller.
    def create_object(self, session: Session, values: dict[str, Any], who: Principal) -> Any:
        """Insert a row from `values` (hooks, uniqueness, references checked) and emit `<kind>.created`."""
        if self.prepare_create is not None:
            values = self.prepare_create(session, values, who)
        check_unique(session, self.model, self.kind, self.unique, values)
        check_references(session, self.model, values)
        obj = self.model(**values)
        session.add(obj)
        session.flush()
        if self.after_create is not None:
            self.after_create(session, obj, who)
        emit(session, f"{self.event_code}.created", f"{who.name} created {self.kind} {self.label(obj)}",
             actor=who.name, **self.extra_event_fields(obj))
        return obj

    def update_object(self, session: Session, obj_id: Any, values: dict[str, Any], who: Principal) -> Any:
        """Change the given fields of a row (the payload's set fields only) and emit `<kind>.updated`."""
        obj = self.fetch(session, obj_id, who)
        if self.prepare_update is not None:
            values = self.prepare_update(session, obj, values, who)
        check_unique(session, self.model, self.kind, self.unique, values, exclude_id=obj.id)
        check_references(session, self.model, values)
        for key, value in values.items():
            setattr(obj, key, value)
        session.flush()
        if self.after_update is not None:
            self.after_update(session, obj, values)
        if values:
            emit(session, f"{self.event_code}.updated",
                 f"{who.name} changed {self.kind} {self.label(obj)}: {', '.join(sorted(values))}",
                 actor=who.name, **self.extra_event_fields(obj))
        return obj

    def delete_object(self, session: Session, obj_id: Any, who: Principal) -> None:
        """Delete a row (refused by before_delete when it is in use) and emit `<kind>.deleted`. Of concurrent
        deletes of one row exactly one does it; the others wait for its lock and get NotFound."""
        obj = self.fetch(session, obj_id, who, lock=True)
        if self.before_delete is not None:
            self.before_delete(session, obj)
        label, extra = self.label(obj), self.extra_event_fields(obj)
        session.delete(obj)
        forget_tags(session, self.kind, [obj.id])
        session.flush()
        if self.after_delete is not None:
            self.after_delete(session, obj)
        emit(session, f"{self.event_code}.deleted", f"{who.name} deleted {self.kind} {label}", actor=who.name,
             **extra)


PAGING_PARAMS = ("page", "per_page", "sort", "order")


def _filter_params(res: CrudResource) -> Callable[..., dict[str, Any]]:
    """A dependency taking the resource's declared filters as optional query parameters (shown in /docs); any
    other parameter is a 400 naming the ones there are, rather than a filter silently ignored."""
    allowed = (*PAGING_PARAMS, *res.filters)

    def dependency(request: Request, **values: Any) -> dict[str, Any]:
        unknown = sorted(set(request.query_params) - set(allowed))
        if unknown:
            raise BadRequest(f"{res.path} has no parameter {', '.join(unknown)}; its parameters: {', '.join(allowed)}")
        return {name: value for name, value in values.items() if value is not None}

    dependency.__signature__ = inspect.Signature([  # type: ignore[attr-defined]
        inspect.Parameter("request", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=Request),
        *(inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, annotation=str | None,
                            default=Query(None, max_length=64, description=f"only {res.kind}s with this {name}"))
          for name in res.filters)])
    return dependency


def crud_router(res: CrudResource) -> APIRouter:
    router = APIRouter(prefix=f"/{res.path}", tags=[res.path])
    Reader = Annotated[Principal, Depends(require(res.read_permission))]
    Writer = Annotated[Principal, Depends(require(res.write_permission))]
    Filters = Annotated[dict[str, Any], Depends(_filter_params(res))]
    filtered = f"; filters: {', '.join(res.filters)}" if res.filters else ""

    @router.get("", response_model=Page[res.out], summary=f"List {res.kind}s (paged, sortable{filtered})")
    def list_items(session: DbSession, paging: Paging, who: Reader, match: Filters) -> dict[str, Any]:
        return res.list_page(session, paging, who, **match)

    @router.get("/{item_id}", response_model=res.out, summary=f"Get one {res.kind}")
    def get_item(item_id: str, session: DbSession, who: Reader) -> Any:
        return res.out.model_validate(res.fetch(session, item_id, who))

    if res.own_writes:
        return router

    if res.create is not None:
        create_schema = res.create

        @router.post("", response_model=res.created_out or res.out, status_code=201, summary=f"Create a {res.kind}")
        def create_item(payload: create_schema, session: DbSession, who: Writer) -> Any:  # type: ignore[valid-type]
            obj = res.create_object(session, payload.model_dump(), who)
            return (res.created_out or res.out).model_validate(obj)

    if res.update is not None:
        update_schema = res.update

        @router.patch("/{item_id}", response_model=res.out, summary=f"Change a {res.kind}")
        def update_item(item_id: str, payload: update_schema, session: DbSession, who: Writer) -> Any:  # type: ignore
            return res.out.model_validate(res.update_object(session, item_id, payload.model_dump(exclude_unset=True),
                                                            who))

    if res.create is not None:
        @router.delete("/{item_id}", status_code=204, summary=f"Delete a {res.kind}")
        def delete_item(item_id: str, session: DbSession, who: Writer) -> Response:
            res.delete_object(session, item_id, who)
            return Response(status_code=204)

    return router
