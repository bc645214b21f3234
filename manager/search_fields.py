"""What the administrator search (search_dsl) can find: oVirt's object and field names mapped onto our models.

Objects and fields follow oVirt's (docs/search-language.md section 4 is generated from here) as far as our
models have them: `Vms` are desktops,
`Disks` are volumes, `Users.usrname` splits at the last '@' into username and domain, and so on. A few fields
are our own (marked "ours" below) where a model column has no oVirt counterpart. Every column of a searched
model is either reachable from a field or a cross-reference, or listed in `EXEMPT` with the reason; models
nobody searches are listed in `UNSEARCHED_MODELS` (tests/integration/search/test_registry.py enforces both).

Names come only from these declarations: search_dsl never resolves a model or a column from query text.

Cross-references that go through a link table (which users hold a desktop, which template a desktop's version
belongs to, the tags of an object) are declared on *link views*: the target table joined to its link columns,
so the join to the searching row is one equality. Postgres turns such an EXISTS into a semi-join instead of
re-running a subquery for every row (bench/search.py measures it). A link view is a non-searchable ObjectDef
with the same fields as the object it stands for, named "<Target> (of <Source>)".

"Hold" (oVirt's VM<->User permission relation): a user holds a desktop when it is assigned to them
(`desktops.assigned_user_id`), when an Assignment row links them, or when a direct user Entitlement names the
desktop. Group entitlements do not count (oVirt's Users cross-reference also lists direct permissions only).
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import (BigInteger, String, and_, case, func, literal, literal_column, not_, or_, select,
                        true, tuple_, type_coerce, union_all)
from sqlalchemy.orm import aliased
from sqlalchemy.sql import operators
from sqlalchemy.types import UserDefinedType

from core.enums import HostStatus, OsType, PoolType, PowerState, PrincipalSource, ProtocolPolicy
from core.enums import DisconnectAction, ReclaimPolicy, TaskState
from manager.models import (ApiToken, Assignment, Bookmark, BrowserConsole, Cluster, Desktop, DesktopSession,
                            DirectorySyncState, Entitlement, Event, Group, GroupGroupMembership, Host, Job,
                            LoginAttempt, Pool, RoleAssignment, Snapshot, StorageDomain, Tag, TagAssignment, Template, TemplateVersion,
                            User, UserGroupMembership, Volume)
from manager.models import ManagerInstance, ManagerLeader
from manager.models import FenceAgent, HaRestart, HostHaState
from manager.models import Alert
from manager.models import NotificationOutbox, NotificationSubscription
from manager.models import PlannerRun, PlannerSample
from manager.models import ClusterPolicy, PolicyBalloon, PolicyHostState
from manager.models.search_indexes import (DESKTOP_TEXT_COLUMNS, SEPARATOR, SEVERITY_CODES, dialect_function,
                                           severity_code)
from search_dsl import Field, Kind, ObjectDef, Registry, Relation, TagTree, XRef
from search_dsl.compiler import InSelect, column_of as col
from search_dsl.registry import DATE_OPS, NUMERIC_OPS, STRING_OPS

GIB = 1024 ** 3


# ---- computed columns ------------------------------------------------------------------------------------
seconds_since = dialect_function(
    "seconds_since", BigInteger(), "CAST(EXTRACT(EPOCH FROM (now() - {args})) AS BIGINT)",
    "CAST((julianday('now') - julianday({args})) * 86400 AS INTEGER)",
    "Whole seconds from a timestamp column to now (oVirt's `elapsed_time`), on Postgres and SQLite.")


def _text(name: str) -> Callable[[Any], Any]:
    """An enum column compared as plain text: names with no counterpart here may compare with any string."""
    return lambda entity: type_coerce(col(entity, name), String(32))


def _uptime(desktop: Any) -> Any:
    # started_at keeps the last start after a stop; a desktop that is down has been up for 0 seconds.
    return case((type_coerce(col(desktop, "power_state"), String(32)) == PowerState.DOWN.value, literal(0)),
                else_=seconds_since(col(desktop, "started_at")))


def joined_text(entity: Any, columns: tuple[str, ...]) -> Any:
    """`a || <US> || b || ...`: the expression ix_desktops_text_trgm indexes (manager/models/search_indexes.py).

    Free text then means "one of these columns contains v" (the separator is never typed, so a plain value
    cannot match across two columns; a value with `*` could)."""
    expression = col(entity, columns[0])
    for name in columns[1:]:
        expression = expression + literal_column(f"'{SEPARATOR}'") + col(entity, name)
    return expression


def _user_and_domain(user: Any) -> Any:
    return col(user, "username") + literal("@") + col(user, "domain")


def _gib(name: str) -> Callable[[Any], Any]:
    return lambda entity: col(entity, name) // GIB


def _constant(value: str) -> Callable[[Any], Any]:
    return lambda entity: literal(value, String)


# ---- values on a related row ----------------------------------------------------------------------------------
class Related(UserDefinedType):
    """A value on a related row (a desktop's host name, an event's desktop name, an object's tag names).

    A field declares it over the searching row's key columns: `type_coerce(desktop.host_id,
    Related("desktop.host"))`. Any comparison `x <op> v` then means "some related row's value <op> v" and
    compiles to `key IN (SELECT <keys of related rows> WHERE value <op> v)`; `x IS NULL` means "no related row".
    Postgres runs such an uncorrelated IN once, as a hashed subplan, also inside OR (free text over many
    columns) - where a correlated EXISTS would run once per row (bench/search.py shows the difference). Use it
    for single-valued relations; multi-valued fields that must hold on the same related row (tag hierarchy,
    template versions) stay on a search_dsl Relation.
    """

    cache_ok = True

    def __init__(self, path: str) -> None:
        self.path = path

    def get_col_spec(self, **kw: Any) -> str:  # pragma: no cover - never rendered as a column type
        return "TEXT"

    class comparator_factory(UserDefinedType.Comparator):
        def operate(self, op: Any, *other: Any, **kw: Any) -> Any:
            keys = self.expr.clause
            lookup = RELATED[self.type.path]
            if op in (operators.is_, operators.is_not) and other and other[0] is None:
                missing = lookup.missing(keys)
                return missing if op is operators.is_ else not_(missing)
            return lookup.matching(keys, lambda value: op(value, *other, **kw))

        def reverse_operate(self, op: Any, other: Any, **kw: Any) -> Any:  # pragma: no cover
            raise TypeError(f"{self.type.path} cannot be the right side of {op}")


@dataclass(frozen=True)
class Lookup:
    """How to find the related rows of a `Related` path: `matching(keys, predicate)` and `missing(keys)`."""

    matching: Callable[[Any, Callable[[Any], Any]], Any]
    missing: Callable[[Any], Any]


def _related(path: str, *keys: str) -> Callable[[Any], Any]:
    """A column spec: the value of `path` on the rows related to the entity's `keys`."""
    if len(keys) == 1:
        return lambda entity: type_coerce(col(entity, keys[0]), Related(path))
    return lambda entity: type_coerce(tuple_(*(col(entity, k) for k in keys)), Related(path))


def _lookup_alias(model: type) -> Any:
    """The one alias of `model` every lookup subquery selects from.

    Lookups are uncorrelated (`.correlate(None)`), so one alias serves every subquery of a statement, nested
    ones included (SQL resolves a name to the innermost FROM). Made once: an alias builds its column
    collection on first use, which costs more than the rest of compiling a query (free text uses seven lookups).
    """
    return aliased(model, name=f"lookup_{model.__tablename__}")


def _lookup(*columns: Any) -> Any:
    return select(*columns).correlate(None)


def _by_foreign_key(model: type, value: str) -> Lookup:
    """The related row is `model` with id = the searching row's foreign key."""
    other = _lookup_alias(model)

    def matching(key: Any, predicate: Callable[[Any], Any]) -> Any:
        return InSelect(key, _lookup(other.id).where(predicate(getattr(other, value))))
    return Lookup(matching, lambda key: key.is_(None))


def _tag_names(kind: str) -> Lookup:
    tag, link = _lookup_alias(Tag), _lookup_alias(TagAssignment)

    def tagged(predicate: Callable[[Any], Any] | None = None) -> Any:
        stmt = _lookup(link.object_id).join(tag, tag.id == link.tag_id).where(link.object_kind == kind)
        return stmt.where(predicate(tag.name)) if predicate is not None else stmt
    return Lookup(lambda key, predicate: InSelect(key, tagged(predicate)), lambda key: not_(InSelect(key, tagged())))


def _desktop_cluster() -> Lookup:
    """A desktop's cluster is its host's, or (when it is not placed on a host) its pool's."""
    host, pool, cluster = _lookup_alias(Host), _lookup_alias(Pool), _lookup_alias(Cluster)

    def matching(keys: Any, predicate: Callable[[Any], Any]) -> Any:
        host_id, pool_id = keys.clauses
        clusters = _lookup(cluster.id).where(predicate(cluster.name))
        return or_(InSelect(host_id, _lookup(host.id).where(host.cluster_id.in_(clusters))),
                   and_(host_id.is_(None), InSelect(pool_id, _lookup(pool.id).where(pool.cluster_id.in_(clusters)))))

    def missing(keys: Any) -> Any:
        host_id, pool_id = keys.clauses
        return and_(host_id.is_(None), or_(pool_id.is_(None), InSelect(pool_id, _lookup(pool.id).where(
            pool.cluster_id.is_(None)))))
    return Lookup(matching, missing)


def _user_pool_names() -> Lookup:
    pool, grant = _lookup_alias(Pool), _lookup_alias(Entitlement)

    def entitled(predicate: Callable[[Any], Any] | None = None) -> Any:
        stmt = _lookup(grant.user_id).join(pool, pool.id == grant.pool_id).where(grant.user_id.is_not(None))
        return stmt.where(predicate(pool.name)) if predicate is not None else stmt
    return Lookup(lambda key, predicate: InSelect(key, entitled(predicate)),
                  lambda key: not_(InSelect(key, entitled())))


RELATED: dict[str, Lookup] = {
    "host": _by_foreign_key(Host, "name"),
    "desktop": _by_foreign_key(Desktop, "name"),
    "pool": _by_foreign_key(Pool, "name"),
    "cluster": _by_foreign_key(Cluster, "name"),
    "template": _by_foreign_key(Template, "name"),
    "desktop.cluster": _desktop_cluster(),
    "user.pools": _user_pool_names(),
    **{f"{kind}.tags": _tag_names(kind) for kind in ("desktop", "host", "template", "user")},
}


def _tag_text(kind: str) -> Field:
    """The names of an object's tags, for free text only (`tag = x` is the TAG field, with descendants)."""
    return Field("_tag_names", Kind.STRING, _related(f"{kind}.tags", "id"), hidden=True, operators=(),
                 sortable=False)


def _names(*fields: Field) -> tuple[str, ...]:
    """Free-text fields: every visible string field that is not a TAG (tag names come via _tag_names)."""
    return tuple(f.name for f in fields if f.in_free_text and not f.hidden and f.kind is not Kind.TAG) + \
        tuple(f.name for f in fields if f.name.startswith("_") and f.name.endswith("_names"))


# ---- enum names: oVirt's spelling -> our stored value -------------------------------------------------------
NO_MATCH = "(none)"  # a stored value no row has: oVirt states we never record are valid names that match nothing
VM_STATUS = {
    "Unassigned": NO_MATCH, "Down": PowerState.DOWN.value, "Up": PowerState.UP.value,
    "PoweringUp": PowerState.POWERING_UP.value, "Paused": PowerState.PAUSED.value,
    "MigratingFrom": PowerState.MIGRATING.value, "MigratingTo": PowerState.MIGRATING.value,
    "Migrating": PowerState.MIGRATING.value, "Unknown": PowerState.UNKNOWN.value,
    "NotResponding": PowerState.NOT_RESPONDING.value, "WaitForLaunch": NO_MATCH,
    "RebootInProgress": PowerState.REBOOT_IN_PROGRESS.value, "SavingState": NO_MATCH, "RestoringState": NO_MATCH,
    "Suspended": PowerState.SUSPENDED.value, "ImageIllegal": NO_MATCH, "ImageLocked": NO_MATCH,
    "PoweringDown": PowerState.POWERING_DOWN.value,
}
HOST_STATUS = {
    "Unassigned": NO_MATCH, "Down": HostStatus.DOWN.value, "Maintenance": HostStatus.MAINTENANCE.value,
    "Up": HostStatus.UP.value, "NonResponsive": HostStatus.NON_RESPONSIVE.value, "Error": HostStatus.ERROR.value,
    "Installing": HostStatus.INSTALLING.value, "InstallFailed": NO_MATCH, "Reboot": NO_MATCH,
    "PreparingForMaintenance": NO_MATCH, "NonOperational": NO_MATCH, "PendingApproval": NO_MATCH,
    "Initializing": NO_MATCH, "Connecting": NO_MATCH, "InstallingOS": NO_MATCH, "Kdumping": NO_MATCH,
}
# Our OsType values are osinfo names already; like oVirt they are matched case-sensitively.
OS_NAMES = {os.value: os.value for os in OsType}
TEMPLATE_STATUS = {"OK": "ok", "Locked": "locked", "Illegal": "illegal"}
DISK_STATUS = {"Unassigned": NO_MATCH, "OK": "ok", "LOCKED": "locked", "ILLEGAL": "illegal"}
POOL_TYPE = {"AUTOMATIC": PoolType.AUTOMATIC.value, "MANUAL": PoolType.MANUAL.value,
             "TIME_BASED": PoolType.TIME_BASED.value}  # TIME_BASED: ours
SEVERITY = {name.upper(): code for name, code in SEVERITY_CODES.items()}  # compared in oVirt's order
TASKS = {t.value: t.value for t in TaskState}
SOURCES = {s.value: s.value for s in PrincipalSource}
PROTOCOL_POLICIES = {p.value: p.value for p in ProtocolPolicy}
RECLAIM_POLICIES = {p.value: p.value for p in ReclaimPolicy}
DISCONNECT_ACTIONS = {a.value: a.value for a in DisconnectAction}


def _severity_code(event: Any) -> Any:
    """Severity as a number in oVirt's order (NORMAL < WARNING < ERROR < ALERT), so `severity >= warning` works."""
    return severity_code(type_coerce(col(event, "severity"), String(32)))


# ---- field helpers -----------------------------------------------------------------------------------------
def S(name: str, column: Any = None, **kw: Any) -> Field:
    return Field(name, Kind.STRING, column, **kw)


def I(name: str, column: Any = None, ops: tuple[str, ...] = NUMERIC_OPS, **kw: Any) -> Field:
    return Field(name, Kind.INT, column, operators=ops, **kw)


def L(name: str, column: Any = None, **kw: Any) -> Field:
    return Field(name, Kind.LONG, column, **kw)


def E(name: str, values: dict[str, Any], column: Any, **kw: Any) -> Field:
    return Field(name, Kind.ENUM, column, values=values, **kw)


def B(name: str, column: Any = None) -> Field:
    return Field(name, Kind.BIT, column)


def U(name: str, column: Any = "id", **kw: Any) -> Field:
    return Field(name, Kind.UUID, column, **kw)


def D(name: str, column: Any, **kw: Any) -> Field:
    return Field(name, Kind.DATE, column, **kw)


TAGS = TagTree(Tag, id="id", name="name", parent="parent_id")


def TAG() -> Field:
    return Field("tag", Kind.TAG, "name", via="tags", tags=TAGS)


# ---- link views: a target table with the key that relates it to the searching row ----------------------------
def _subquery(stmt: Any, name: str) -> Any:
    return stmt.subquery(name)


def _holdings() -> list[tuple[Any, Any, Any, tuple[Any, ...]]]:
    """(link table, its desktop id, its user id, conditions): every way a user holds a desktop."""
    assigned = aliased(Desktop, name="assigned_desktop")
    return [
        (assigned, assigned.id, assigned.assigned_user_id, (assigned.assigned_user_id.is_not(None),)),
        (Assignment, Assignment.desktop_id, Assignment.user_id, ()),
        (Entitlement, Entitlement.desktop_id, Entitlement.user_id,
         (Entitlement.desktop_id.is_not(None), Entitlement.user_id.is_not(None))),
    ]


def _held(name: str, branch: Callable[[Any, Any, Any], Any]) -> Any:
    """A link view over holdings: one UNION ALL branch per kind of holding, each a plain join, so a condition
    on the view (a user name, a desktop name) reaches the indexes of every branch."""
    return _subquery(union_all(*(branch(link, desktop_id, user_id).where(*conditions)
                                 for link, desktop_id, user_id, conditions in _holdings())), name)


def _tagged(kind: str) -> Any:
    """Tags of one kind of object, with the tagged object's id (`object_id`)."""
    return _subquery(select(Tag.id, Tag.name, TagAssignment.object_id)
                     .join(TagAssignment, TagAssignment.tag_id == Tag.id)
                     .where(TagAssignment.object_kind == kind), f"{kind}_tags")


def _with_link(model: type, link: Any, on: Any, name: str) -> Any:
    """`model`'s columns plus a `link_id` column, for a link view."""
    return _subquery(select(*model.__table__.columns, link.label("link_id")).select_from(model).join(*on), name)


def _by_link(outer_column: str) -> Callable[[Any, Any], Any]:
    return lambda outer, view: view.c.link_id == col(outer, outer_column)


def _tags_relation(kind: str) -> Relation:
    view = _tagged(kind)
    return Relation("tags", view, lambda obj, tag: tag.c.object_id == col(obj, "id"))


# ---- Vms (desktops) ------------------------------------------------------------------------------------------
VM_FIELDS = (
    S("name"), S("comment"), S("description"),
    E("status", VM_STATUS, _text("power_state")),
    S("ip"), S("fqdn", "guest_hostname"), S("address", "guest_hostname"),
    S("on_host", _related("host", "host_id"), sortable=False),
    Field("uptime", Kind.TIMESPAN, _uptime),
    E("os", OS_NAMES, _text("os_type"), case_sensitive_values=True, free_text=False),
    D("creationdate", "created_at"),
    I("cpu_usage"), I("mem_usage"), I("memory", "memory_mib"), I("vcpus", "cpus"),
    Field("apps", Kind.SUBSTRING, "installed_apps", free_text=False),
    S("cluster", _related("desktop.cluster", "host_id", "pool_id"), sortable=False),
    S("pool", _related("pool", "pool_id"), sortable=False),
    S("loggedinuser", "logged_in_user"), TAG(),
    E("type", {"desktop": "desktop", "server": "server", "highperformance": "highperformance"},
      _constant("desktop")),  # every one of ours is a desktop
    U("id"),
    # ours
    I("disk_size", "disk_size_gib"), I("monitors"), B("ha_enabled"), I("ha_priority"),
    Field("protocols", Kind.LIST, "console_protocols", free_text=False), E("task", TASKS, _text("task_state")),
    _tag_text("desktop"),
    # free text reads the desktop's own text columns as one indexed expression (manager/models/search_indexes.py)
    Field("_text", Kind.STRING, lambda desktop: joined_text(desktop, DESKTOP_TEXT_COLUMNS), hidden=True,
          operators=(), sortable=False),
)
VM_FREE_TEXT = ("_text", "on_host", "cluster", "pool", "_tag_names")
VM_RELATIONS = (_tags_relation("desktop"),)


def _vm(name: str, entity: Any, xrefs: tuple[XRef, ...] = (), searchable: bool = False) -> ObjectDef:
    return ObjectDef(name, entity, VM_FIELDS, aliases=("Desktop",) if searchable else (), xrefs=xrefs,
                     relations=VM_RELATIONS, free_text=VM_FREE_TEXT, default_sort=(("name", "asc"),),
                     searchable=searchable)


# ---- Hosts -----------------------------------------------------------------------------------------------------
HOST_FIELDS = (
    S("name"), S("comment"), E("status", HOST_STATUS, _text("status")),
    S("cluster", _related("cluster", "cluster_id"), sortable=False), S("address"),
    I("cpu_usage"), I("mem_usage"), S("version", "libvirt_version"), I("cpus"), I("memory", "memory_mib"),
    S("cpu_model"), I("active_vms", "active_desktops"), TAG(), I("ha_score", ops=STRING_OPS),
    U("id", hidden=True),
    # ours
    # not ksm_pages_shared / memory_saved: the lexer cuts a field that extends another (ksm, memory) after "and"
    I("free_memory", "free_memory_mib"), B("ksm", "ksm_running"), I("shared_pages", "ksm_pages_shared"),
    I("saved_memory", "ksm_saved_mib"), D("last_heartbeat", "last_heartbeat_at"),
    D("creationdate", "created_at"), _tag_text("host"),
)
HOST_RELATIONS = (_tags_relation("host"),)


def _host(name: str, entity: Any, xrefs: tuple[XRef, ...] = (), searchable: bool = False) -> ObjectDef:
    return ObjectDef(name, entity, HOST_FIELDS, xrefs=xrefs, relations=HOST_RELATIONS,
                     free_text=_names(*HOST_FIELDS), default_sort=(("name", "asc"),), searchable=searchable)


# ---- Templates -------------------------------------------------------------------------------------------------
def _child_count(template: Any) -> Any:
    desktop, version = aliased(Desktop), aliased(TemplateVersion)
    return (select(func.count()).select_from(desktop).join(version, version.id == desktop.template_version_id)
            .where(version.template_id == col(template, "id")).scalar_subquery())


TEMPLATE_FIELDS = (
    S("name"), S("comment"), S("description"),
    E("os", OS_NAMES, _text("os_type"), case_sensitive_values=True, free_text=False),
    D("creationdate", "created_at", operators=DATE_OPS, symbolic_dates=True),
    I("childcount", _child_count), I("mem", "memory_mib"),
    E("status", TEMPLATE_STATUS, "status"),
    S("version_name", "name", via="versions"), TAG(),
    U("_vmt_id", hidden=True),
    # ours
    I("version_number", "number", via="versions"), I("vcpus", "cpus"),
    Field("apps", Kind.SUBSTRING, "installed_apps", free_text=False), _tag_text("template"),
)
TEMPLATE_RELATIONS = (
    Relation("versions", TemplateVersion, lambda template, version: col(version, "template_id") == col(template, "id")),
    _tags_relation("template"),
)


def _template(name: str, entity: Any, xrefs: tuple[XRef, ...] = (), searchable: bool = False) -> ObjectDef:
    return ObjectDef(name, entity, TEMPLATE_FIELDS, xrefs=xrefs, relations=TEMPLATE_RELATIONS,
                     free_text=_names(*TEMPLATE_FIELDS), default_sort=(("name", "asc"),), searchable=searchable)


# ---- Users and Groups ------------------------------------------------------------------------------------------
USER_POOLS = _subquery(select(Pool.name, Entitlement.user_id).join(Entitlement, Entitlement.pool_id == Pool.id)
                       .where(Entitlement.user_id.is_not(None)), "user_pools")
USER_FIELDS = (
    S("name", "first_name"), S("lastname", "last_name"),
    S("usrname", "username", domain_column="domain"), S("login", "username"),
    S("user_and_domain", _user_and_domain), S("directory", "domain"), S("department"), TAG(),
    S("pool", "name", via="pools"),
    Field("type", Kind.RAW, _constant("user")),  # oVirt lists groups here too; ours are under Groups:
    U("id", hidden=True),
    # ours
    S("email"), S("displayname", "display_name"), S("upn"), E("source", SOURCES, _text("source")),
    S("dn"), B("enabled"), B("deleted_in_directory"), _tag_text("user"),
    Field("_pool_names", Kind.STRING, _related("user.pools", "id"), hidden=True, operators=(), sortable=False),
)
USER_RELATIONS = (
    Relation("pools", USER_POOLS, lambda user, pool: pool.c.user_id == col(user, "id")),
    _tags_relation("user"),
)


def _user(name: str, entity: Any, xrefs: tuple[XRef, ...] = (), searchable: bool = False) -> ObjectDef:
    return ObjectDef(name, entity, USER_FIELDS, xrefs=xrefs, relations=USER_RELATIONS,
                     free_text=tuple(n for n in _names(*USER_FIELDS) if n != "pool"),
                     default_sort=(("username", "asc"), ("domain", "asc")), searchable=searchable)


GROUPS = ObjectDef("Group", Group, (
    S("name"), S("grpname", "name"),
    # ours
    S("directory", "domain"), S("description"), E("source", SOURCES, _text("source")), S("dn"),
    B("deleted_in_directory"), U("id", hidden=True),
), default_sort=(("name", "asc"), ("domain", "asc")))


# ---- Pools -----------------------------------------------------------------------------------------------------
def _pool_count(*where: Callable[[Any], Any]) -> Callable[[Any], Any]:
    def count(pool: Any) -> Any:
        desktop = aliased(Desktop)
        return (select(func.count()).select_from(desktop)
                .where(desktop.pool_id == col(pool, "id"), *(w(desktop) for w in where)).scalar_subquery())
    return count


POOLS = ObjectDef("Pool", Pool, (
    S("name"), S("description"), S("comment"), E("type", POOL_TYPE, _text("pool_type")),
    S("cluster", _related("cluster", "cluster_id"), sortable=False),
    I("assigned_vm_count", _pool_count(lambda d: d.assigned_user_id.is_not(None)), ops=STRING_OPS),
    I("running_vm_count", _pool_count(lambda d: type_coerce(d.power_state, String(32)) == PowerState.UP.value),
      ops=STRING_OPS),
    # ours
    I("size"), I("prestarted"), I("max_desktops_per_user"), I("vcpus", "cpus"), I("memory", "memory_mib"),
    S("pattern", "name_pattern"), E("protocol_policy", PROTOCOL_POLICIES, _text("protocol_policy")),
    I("lease_seconds"), I("max_lease_seconds"), D("window_start", "window_start"), D("window_end", "window_end"),
    E("reclaim_policy", RECLAIM_POLICIES, _text("reclaim_policy")),
    E("disconnect_action", DISCONNECT_ACTIONS, _text("disconnect_action")), I("disconnect_after_minutes"),
    S("time_zone"), B("open_now", "schedule_open"),
    S("template", _related("template", "template_id"), sortable=False), D("creationdate", "created_at"),
    U("id", hidden=True),
), default_sort=(("name", "asc"),))


# ---- Events ------------------------------------------------------------------------------------------------------
EVENT_FIELDS = (
    S("type", "code"),  # oVirt: a numeric event type; ours is a dotted code such as desktop.created
    E("severity", SEVERITY, _severity_code, operators=NUMERIC_OPS),
    S("message"),
    D("time", "time", operators=DATE_OPS, symbolic_dates=True),
    S("usrname", "actor"),  # "user@domain", or the host/system that did it
    S("event_host", _related("host", "host_id"), sortable=False),
    S("event_vm", _related("desktop", "desktop_id"), sortable=False),
    S("event_template", _related("template", "template_id"), sortable=False), S("correlation_id"),
    S("origin", "actor", free_text=False),
    B("deleted"),
    S("_event_vm_id", "desktop_id", hidden=True), S("_event_template_id", "template_id", hidden=True),
    S("_event_host_id", "host_id", hidden=True), S("usrid", "user_id", hidden=True, operators=()),
    # ours
    S("event_pool", _related("pool", "pool_id"), sortable=False), S("_event_pool_id", "pool_id", hidden=True),
    S("_event_job_id", "job_id", hidden=True),
    S("code", free_text=False),  # the same as type, by the name the event catalog (docs/events.md) gives it
)


def _event(name: str, entity: Any, xrefs: tuple[XRef, ...] = (), searchable: bool = False) -> ObjectDef:
    return ObjectDef(name, entity, EVENT_FIELDS, xrefs=xrefs,
                     default_sort=(("id", "desc"),), base_filter=lambda event: col(event, "deleted").is_(False),
                     searchable=searchable)


# ---- Clusters, Storage, Disks ----------------------------------------------------------------------------------------
CLUSTER_FIELDS = (S("name"), S("description"), S("comment"), S("cpu_type"),
                  D("creationdate", "created_at"), U("id", hidden=True))


def _cluster(name: str, entity: Any, searchable: bool = False) -> ObjectDef:
    return ObjectDef(name, entity, CLUSTER_FIELDS, default_sort=(("name", "asc"),), searchable=searchable)


STORAGE_FIELDS = (
    S("name"), S("comment"), S("description"),
    I("free_size", _gib("free_bytes")), I("used_size", _gib("used_bytes")), I("total_size", _gib("total_bytes")),
    # ours
    S("path"), D("creationdate", "created_at"), U("id", hidden=True),
)


def _storage(name: str, entity: Any, searchable: bool = False) -> ObjectDef:
    return ObjectDef(name, entity, STORAGE_FIELDS, default_sort=(("name", "asc"),), searchable=searchable)


DISKS = ObjectDef("Disk", Volume, (
    S("alias", "path"), S("name", "path"),
    L("provisioned_size", "virtual_size", operators=("<", ">")), L("size", "virtual_size", operators=("<", ">")),
    L("actual_size", operators=("<", ">")), D("creation_date", "created_at"),
    E("status", DISK_STATUS, "status"),
    I("number_of_vms", lambda volume: case((col(volume, "desktop_id").is_(None), 0), else_=1)),
    Field("vm_names", Kind.LIST, "name", via="desktop"), U("id"),
    # ours
    S("format"), S("role"),
), relations=(Relation("desktop", Desktop, lambda volume, desktop: col(desktop, "id") == col(volume, "desktop_id")),),
    xrefs=(XRef("Storage", "Storage (of Disk)", lambda volume, sd: col(sd, "id") == col(volume, "storage_domain_id")),),
    default_sort=(("path", "asc"),))


# ---- link views and cross-references (docs/search-language.md section 6) ---------------------------
_V, _TV = aliased(Desktop, name="linked_desktop"), aliased(TemplateVersion, name="linked_version")

USERS_BY_DESKTOP = _held("users_by_desktop", lambda link, desktop_id, user_id: select(
    *User.__table__.columns, desktop_id.label("link_id")).select_from(User).join(link, user_id == User.id))
DESKTOPS_BY_USER = _held("desktops_by_user", lambda link, desktop_id, user_id: select(
    *Desktop.__table__.columns, user_id.label("link_id")).select_from(Desktop).join(link, desktop_id == Desktop.id))
TEMPLATES_BY_VERSION = _with_link(Template, TemplateVersion.id,
                                  (TemplateVersion, TemplateVersion.template_id == Template.id),
                                  "templates_by_version")
DESKTOPS_BY_TEMPLATE = _with_link(Desktop, TemplateVersion.template_id,
                                  (TemplateVersion, TemplateVersion.id == Desktop.template_version_id),
                                  "desktops_by_template")
# Hosts <-> templates and users go through the desktops running on the host.
TEMPLATES_BY_HOST = _subquery(
    select(*Template.__table__.columns, _V.host_id.label("link_id")).select_from(Template)
    .join(_TV, _TV.template_id == Template.id).join(_V, _V.template_version_id == _TV.id), "templates_by_host")
HOSTS_BY_TEMPLATE = _subquery(
    select(*Host.__table__.columns, _TV.template_id.label("link_id")).select_from(Host)
    .join(_V, _V.host_id == Host.id).join(_TV, _TV.id == _V.template_version_id), "hosts_by_template")
USERS_BY_HOST = _held("users_by_host", lambda link, desktop_id, user_id: select(
    *User.__table__.columns, _V.host_id.label("link_id")).select_from(User).join(link, user_id == User.id)
    .join(_V, _V.id == desktop_id))
HOSTS_BY_USER = _held("hosts_by_user", lambda link, desktop_id, user_id: select(
    *Host.__table__.columns, user_id.label("link_id")).select_from(Host).join(_V, _V.host_id == Host.id)
    .join(link, desktop_id == _V.id))
USERS_BY_TEMPLATE = _held("users_by_template", lambda link, desktop_id, user_id: select(
    *User.__table__.columns, _TV.template_id.label("link_id")).select_from(User).join(link, user_id == User.id)
    .join(_V, _V.id == desktop_id).join(_TV, _TV.id == _V.template_version_id))
TEMPLATES_BY_USER = _held("templates_by_user", lambda link, desktop_id, user_id: select(
    *Template.__table__.columns, user_id.label("link_id")).select_from(Template)
    .join(_TV, _TV.template_id == Template.id).join(_V, _V.template_version_id == _TV.id)
    .join(link, desktop_id == _V.id))
EVENTS_BY_TEMPLATE = _subquery(
    select(*Event.__table__.columns, _TV.template_id.label("link_id")).select_from(Event)
    .join(_V, _V.id == Event.desktop_id).join(_TV, _TV.id == _V.template_version_id), "events_by_template")
TEMPLATES_BY_DESKTOP = _subquery(
    select(*Template.__table__.columns, _V.id.label("link_id")).select_from(Template)
    .join(_TV, _TV.template_id == Template.id).join(_V, _V.template_version_id == _TV.id), "templates_by_desktop")
CLUSTERS_BY_HOST = _with_link(Cluster, Host.id, (Host, Host.cluster_id == Cluster.id), "clusters_by_host")
STORAGE_BY_DESKTOP = _with_link(StorageDomain, Volume.desktop_id,
                                (Volume, Volume.storage_domain_id == StorageDomain.id),
                                "storage_by_desktop")


def _shared(outer: Any, inner: Any) -> Any:
    """Storage is one directory every host reaches (no data centers): every host and cluster has every domain."""
    return true()


def _equal(outer_column: str, inner_column: str) -> Callable[[Any, Any], Any]:
    return lambda outer, inner: col(inner, inner_column) == col(outer, outer_column)


VMS = _vm("Vm", Desktop, searchable=True, xrefs=(
    XRef("Host", "Host (of Vm)", _equal("host_id", "id")),
    XRef("Template", "Template (of Vm)", _by_link("template_version_id")),
    XRef("Event", "Event (of Vm)", _equal("id", "desktop_id")),
    XRef("User", "User (of Vm)", _by_link("id")),
    XRef("Storage", "Storage (of Vm)", _by_link("id")),
))
HOSTS = _host("Host", Host, searchable=True, xrefs=(
    XRef("Vm", "Vm (of Host)", _equal("id", "host_id")),
    XRef("Template", "Template (of Host)", _by_link("id")),
    XRef("Event", "Event (of Host)", _equal("id", "host_id")),
    XRef("User", "User (of Host)", _by_link("id")),
    XRef("Storage", "Storage (of Host)", _shared),
))
TEMPLATES = _template("Template", Template, searchable=True, xrefs=(
    XRef("Vm", "Vm (of Template)", _by_link("id")),
    XRef("Host", "Host (of Template)", _by_link("id")),
    XRef("Event", "Event (of Template)", _by_link("id")),
    XRef("User", "User (of Template)", _by_link("id")),
    XRef("Storage", "Storage (of Template)", _equal("storage_domain_id", "id")),
))
USERS = _user("User", User, searchable=True, xrefs=(
    XRef("Vm", "Vm (of User)", _by_link("id")),
    XRef("Host", "Host (of User)", _by_link("id")),
    XRef("Template", "Template (of User)", _by_link("id")),
    XRef("Event", "Event (of User)", _equal("id", "user_id")),
))
EVENTS = _event("Event", Event, searchable=True, xrefs=(
    XRef("Vm", "Vm (of Event)", _equal("desktop_id", "id")),
    XRef("Host", "Host (of Event)", _equal("host_id", "id")),
    XRef("Template", "Template (of Event)", _by_link("desktop_id")),  # via the event's desktop, as oVirt
    XRef("User", "User (of Event)", _equal("user_id", "id")),
    XRef("Cluster", "Cluster (of Event)", _by_link("host_id")),
))

LINK_VIEWS = (
    _host("Host (of Vm)", Host), _template("Template (of Vm)", TEMPLATES_BY_VERSION),
    _event("Event (of Vm)", Event), _user("User (of Vm)", USERS_BY_DESKTOP),
    _storage("Storage (of Vm)", STORAGE_BY_DESKTOP),
    _vm("Vm (of Host)", Desktop), _template("Template (of Host)", TEMPLATES_BY_HOST), _event("Event (of Host)", Event),
    _user("User (of Host)", USERS_BY_HOST),
    _vm("Vm (of Template)", DESKTOPS_BY_TEMPLATE), _host("Host (of Template)", HOSTS_BY_TEMPLATE),
    _event("Event (of Template)", EVENTS_BY_TEMPLATE), _user("User (of Template)", USERS_BY_TEMPLATE),
    _storage("Storage (of Template)", StorageDomain),
    _vm("Vm (of User)", DESKTOPS_BY_USER), _host("Host (of User)", HOSTS_BY_USER),
    _template("Template (of User)", TEMPLATES_BY_USER), _event("Event (of User)", Event),
    _vm("Vm (of Event)", Desktop), _host("Host (of Event)", Host),
    _template("Template (of Event)", TEMPLATES_BY_DESKTOP),
    _user("User (of Event)", User), _cluster("Cluster (of Event)", CLUSTERS_BY_HOST),
    _storage("Storage (of Disk)", StorageDomain), _storage("Storage (of Host)", StorageDomain),
    _storage("Storage (of Cluster)", StorageDomain), _host("Host (of Storage)", Host),
    _cluster("Cluster (of Storage)", Cluster),
)

CLUSTERS = ObjectDef("Cluster", Cluster, CLUSTER_FIELDS, xrefs=(XRef("Storage", "Storage (of Cluster)", _shared),),
                     default_sort=(("name", "asc"),))
STORAGE = ObjectDef("Storage", StorageDomain, STORAGE_FIELDS, xrefs=(
    XRef("Host", "Host (of Storage)", _shared), XRef("Cluster", "Cluster (of Storage)", _shared),
), default_sort=(("name", "asc"),))

REGISTRY = Registry([VMS, HOSTS, TEMPLATES, USERS, GROUPS, POOLS, EVENTS, CLUSTERS, STORAGE, DISKS, *LINK_VIEWS])
"""Every searchable object (Vms, Hosts, Templates, Users, Groups, Pools, Events, Clusters, Storage, Disks)."""

# The API kind of each searchable object's rows (for the typed search results).
KINDS = {"Vm": "desktop", "Host": "host", "Template": "template", "User": "user", "Group": "group",
         "Pool": "pool", "Event": "event", "Cluster": "cluster", "Storage": "storage_domain", "Disk": "disk"}


# ---- what is deliberately not searchable ----------------------------------------------------------------------
EXEMPT: dict[type, dict[str, str]] = {
    Desktop: {
        "volume_id": "the active disk layer; disks are searched with Disks: vm_names = <desktop>",
        "assigned_at": "bookkeeping of the current holder; search holders with Vms: Users.",
        "lease_until": "time-based pool bookkeeping, changes every lease",
        "pending_template_version_id": "internal marker of a rolling update",
        "updated_at": "row bookkeeping",
    },
    Host: {
        "agent_url": "the node agent's endpoint, an internal address",
        "agent_token_sha256": "secret (the node token's digest)",
        "agent_token_sealed": "secret (the node token, sealed)",
        "libvirt_uri": "connection detail of the node agent",
        "display_address": "console connection detail (search the management address)",
        "domain_types": "hypervisor capability flags reported by the node, not an inventory attribute",
        "ksm_pages_sharing": "a raw KSM counter (saved_memory is what it means)",
        "heartbeat_seq": "heartbeat bookkeeping",
        "agent_started_at": "heartbeat bookkeeping",
    },
    Template: {
        "boot_kernel": "boot configuration of the demo image (a file path)",
        "boot_initrd": "boot configuration of the demo image (a file path)",
        "boot_cmdline": "boot configuration of the demo image",
        "latest_version_id": "internal pointer; versions are searched with version_name / version_number",
    },
    TemplateVersion: {
        "volume_id": "the version's image file; disks are searched with Disks:",
        "created_from_desktop_id": "lineage bookkeeping",
        "created_at": "a version's creation time; Templates: creationdate is the template's",
    },
    User: {
        "password_hash": "secret",
        "object_guid": "the directory's internal key",
        "usn_changed": "directory sync bookkeeping",
        "synced_at": "directory sync bookkeeping",
        "created_at": "row bookkeeping",
        "console_client": "the user's own portal preference (native or browser client)",
        "auto_connect": "the user's own portal preference",
    },
    Group: {
        "object_guid": "the directory's internal key",
        "usn_changed": "directory sync bookkeeping",
        "synced_at": "directory sync bookkeeping",
        "created_at": "row bookkeeping",
    },
    Pool: {
        "template_version_id": "a pinned version; search the template with template = <name>",
        "schedule": "recurring opening hours (a list of windows); search open_now and time_zone",
    },
    Event: {},
    Cluster: {},
    StorageDomain: {},
    Volume: {
        "parent_id": "the backing-file chain, internal",
    },
    Tag: {
        "description": "notes on a tag; tag = <name> searches by name",
        "created_at": "row bookkeeping",
    },
    TagAssignment: {},
}

UNSEARCHED_MODELS: dict[type, str] = {
    Assignment: "a link table: it defines which users hold a desktop (Vms: Users. / Users: Vms.)",
    Entitlement: "a link table: direct user entitlements are holdings (Vms: Users.) and pools (Users: pool)",
    ApiToken: "secrets",
    BrowserConsole: "single-use console tickets and their connections; audited as console.browser_* events",
    LoginAttempt: "security log, not inventory",
    DirectorySyncState: "directory sync bookkeeping",
    RoleAssignment: "authorization data, administered under /role-assignments",
    UserGroupMembership: "membership links, administered by the directory sync",
    GroupGroupMembership: "membership links, administered by the directory sync",
    DesktopSession: "console sessions have no oVirt search object here (listed under /sessions)",
    Job: "jobs have no useful oVirt search fields (upstream: correlation_id only); listed under /jobs",
    Alert: "alerts are few and listed under /alerts (state, kind, object); their openings are alert.* events",
    Snapshot: "snapshots are listed per desktop",
    Bookmark: "bookmarks hold search queries themselves",
    HostHaState: "the HA monitor's per-host bookkeeping (liveness, fence state), shown by GET /api/v1/ha",
    FenceAgent: "BMC connection settings with sealed passwords, administered under /hosts/{id}/fence-agents",
    HaRestart: "the queue of desktops waiting for an HA restart, shown by GET /api/v1/ha",
    ManagerLeader: "the manager's own leader lease (GET /api/v1/ha)",
    ManagerInstance: "the manager's own processes (GET /api/v1/ha)",
    NotificationSubscription: "sealed channel URLs, listed under /notifications/subscriptions",
    NotificationOutbox: "the notification dispatcher's queue of messages",
    PlannerRun: "planner runs are listed under /planner/runs, each with its report",
    PlannerSample: "a planner run's measurements, exported with the run (JSON, CSV)",
    ClusterPolicy: "a cluster's policies, read and set under /clusters/{id}/policies",
    PolicyHostState: "the policy engine's own bookkeeping of hosts in standby and KSM settings pushed",
    PolicyBalloon: "the policy engine's balloon targets (a desktop's memory is searched as memory)",
}
