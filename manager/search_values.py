"""The values the search bar suggests while a condition's value is typed: host names after `Vms: on_host = `,
pool names after `Vms: pool = `, tag names after `tag = `, and so on.

search_dsl's completion says which field of which object the value is for (`Completion.value_of`: the searched
object's field, or through a cross-reference the field of the object it reaches; our cross-references are named
after those objects). `SOURCES` below maps that, by declared names only, to where such values live; a field not
listed gets no values (numbers, dates, free-form text). Nothing here resolves a name sent by the client.

Each lookup is "the first LIMIT names starting with the typed prefix, in any case, in order": a range of
`folded(name)` (lower case, code-point order). The desktops' and users' names have an index on exactly that
(manager/models/search_indexes.py), so the walk stops after LIMIT entries however many names share the prefix;
the other tables are small enough to read whole.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from sqlalchemy import select
from sqlalchemy.orm import Session

from event_manager.service import catalog
from manager.models import Cluster, Desktop, Group, Host, Pool, StorageDomain, Tag, Template, User
from manager.models.search_indexes import folded
from search_dsl import Completion, value_text

LIMIT = 20


def prefix_end(prefix: str) -> str | None:
    """The least string above every string starting with `prefix` in code-point order (None: no such bound)."""
    chars = list(prefix)
    while chars:
        after = ord(chars[-1]) + 1
        after = 0xE000 if 0xD800 <= after < 0xE000 else after  # surrogates are no characters
        if after <= 0x10FFFF:
            return "".join(chars[:-1]) + chr(after)
        chars.pop()
    return None


def starting_with(key: Any, prefix: str) -> list[Any]:
    """Conditions on a `folded(...)` expression: it starts with `prefix`, in any case (a range of the index)."""
    low = prefix.lower()
    if not low:
        return []
    high = prefix_end(low)
    return [key >= low] if high is None else [key >= low, key < high]


class Source(Protocol):
    def lookup(self, session: Session, prefix: str, limit: int) -> list[str]: ...


@dataclass(frozen=True)
class Names:
    """The values of one name column."""

    column: Any

    def lookup(self, session: Session, prefix: str, limit: int) -> list[str]:
        key = folded(self.column)
        stmt = select(self.column).where(*starting_with(key, prefix)).order_by(key, self.column).limit(limit)
        return list(dict.fromkeys(session.scalars(stmt)))  # group names repeat across domains


@dataclass(frozen=True)
class UserNames:
    """`username@domain`, as `usrname` compares it (the part after the last '@' with the domain)."""

    def lookup(self, session: Session, prefix: str, limit: int) -> list[str]:
        key = folded(User.username)
        if "@" in prefix:
            user, _, domain = prefix.rpartition("@")
            where = [key == user.lower(), *starting_with(folded(User.domain), domain)]
        else:
            where = starting_with(key, prefix)
        stmt = select(User.username, User.domain).where(*where).order_by(key, User.username, User.domain)
        return [f"{username}@{domain}" for username, domain in session.execute(stmt.limit(limit))]


@dataclass(frozen=True)
class EventCodes:
    """The codes of the event catalog (event_manager/catalog.py), which every event's code is one of."""

    def lookup(self, session: Session, prefix: str, limit: int) -> list[str]:
        return [code for code in sorted(catalog.CATALOG) if code.startswith(prefix.lower())][:limit]


DESKTOPS, HOSTS, POOLS, TEMPLATES = Names(Desktop.name), Names(Host.name), Names(Pool.name), Names(Template.name)
CLUSTERS, STORAGE, TAGS, GROUPS = Names(Cluster.name), Names(StorageDomain.name), Names(Tag.name), Names(Group.name)
USERS, LOGINS = UserNames(), Names(User.username)

# (object, field) -> where its values live; field None is `Xref = text` (free text over the object reached).
SOURCES: dict[tuple[str, str | None], Source] = {
    ("Vm", "name"): DESKTOPS, ("Vm", "on_host"): HOSTS, ("Vm", "pool"): POOLS, ("Vm", "cluster"): CLUSTERS,
    ("Vm", "tag"): TAGS, ("Vm", None): DESKTOPS,
    ("Host", "name"): HOSTS, ("Host", "cluster"): CLUSTERS, ("Host", "tag"): TAGS, ("Host", None): HOSTS,
    ("Template", "name"): TEMPLATES, ("Template", "tag"): TAGS, ("Template", None): TEMPLATES,
    ("User", "usrname"): USERS, ("User", "login"): LOGINS, ("User", "pool"): POOLS, ("User", "tag"): TAGS,
    ("User", None): USERS,
    ("Group", "name"): GROUPS, ("Group", "grpname"): GROUPS,
    ("Pool", "name"): POOLS, ("Pool", "cluster"): CLUSTERS, ("Pool", "template"): TEMPLATES,
    ("Event", "event_host"): HOSTS, ("Event", "event_vm"): DESKTOPS, ("Event", "event_template"): TEMPLATES,
    ("Event", "event_pool"): POOLS, ("Event", "type"): EventCodes(), ("Event", "code"): EventCodes(),
    ("Cluster", "name"): CLUSTERS, ("Cluster", None): CLUSTERS,
    ("Storage", "name"): STORAGE, ("Storage", None): STORAGE,
    ("Disk", "vm_names"): DESKTOPS,
}


def suggest_values(session: Session, completion: Completion, limit: int = LIMIT) -> list[str]:
    """Up to `limit` values from the database for the value being typed, each written so the query parses
    (quoted when it has spaces, or when the user opened a quote); [] when no value is typed or none is known."""
    of = completion.value_of
    if of is None:
        return []
    source = SOURCES.get((of.xref or of.object, of.field))
    prefix = completion.value_prefix
    if source is None or "*" in prefix or "\x00" in prefix:  # a pattern is being written, not a name
        return []
    written = (value_text(value, quoted=completion.quoted) for value in source.lookup(session, prefix, limit))
    return [text for text in written if text is not None]
