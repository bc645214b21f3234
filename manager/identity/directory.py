"""Reading an Active Directory over LDAP (ldap3): users, groups with their direct members, deletions,
the uSNChanged high-water mark, and password checks by binding as the user.

Everything here talks to the directory and nothing else; manager.identity.sync decides what the rows in the
database become. Values are decoded from the raw attribute bytes (no schema download), so the code behaves the
same on AD and Samba. Every value put into a search filter goes through `escape_filter_chars`.
"""
from __future__ import annotations

import contextlib
import enum
import logging
import re
import ssl
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field

from ldap3 import BASE, DSA, SIMPLE, SUBTREE, Connection, Server, Tls
from ldap3.core.exceptions import LDAPException
from ldap3.utils.conv import escape_filter_chars

from core.errors import Unavailable
from manager.identity.settings import DirectorySettings

log = logging.getLogger(__name__)

ACCOUNTDISABLE = 0x2  # userAccountControl bit: the account is disabled
SHOW_DELETED_OID = "1.2.840.113556.1.4.417"
USER_ATTRIBUTES = ["objectGUID", "sAMAccountName", "userPrincipalName", "displayName", "givenName", "sn", "mail",
                   "department", "userAccountControl", "uSNChanged", "memberOf"]
GROUP_ATTRIBUTES = ["objectGUID", "sAMAccountName", "cn", "description", "member", "uSNChanged"]
DELETED_ATTRIBUTES = ["objectGUID", "objectClass", "sAMAccountName", "uSNChanged"]


@dataclass
class DirectoryUser:
    guid: str
    dn: str
    username: str  # sAMAccountName
    upn: str
    display_name: str
    first_name: str
    last_name: str
    email: str
    department: str
    enabled: bool
    usn: int
    member_of: list[str] = field(default_factory=list)  # DNs of the groups the user is DIRECTLY in


@dataclass
class DirectoryGroup:
    guid: str
    dn: str
    name: str  # sAMAccountName (cn when missing)
    description: str
    usn: int
    members: list[str] = field(default_factory=list)  # DNs of direct members (users and groups)


@dataclass
class DeletedObject:
    guid: str
    kind: str  # "user" | "group"
    name: str


class BindOutcome(enum.Enum):
    OK = "ok"
    WRONG_CREDENTIALS = "wrong_credentials"
    DISABLED = "disabled"
    EXPIRED = "expired"
    LOCKED = "locked"
    RESTRICTED = "restricted"


# AD puts the reason of a failed bind in the diagnostic message ("... data 52e, v1db1"). These sub-codes are
# returned only once the password was right (52e otherwise), so telling them apart leaks nothing.
_BIND_SUBCODES = {"52e": BindOutcome.WRONG_CREDENTIALS, "525": BindOutcome.WRONG_CREDENTIALS,
                  "533": BindOutcome.DISABLED, "701": BindOutcome.EXPIRED, "532": BindOutcome.EXPIRED,
                  "773": BindOutcome.EXPIRED, "775": BindOutcome.LOCKED, "530": BindOutcome.RESTRICTED,
                  "531": BindOutcome.RESTRICTED}
_SUBCODE = re.compile(r"\bdata ([0-9a-f]{3,4})\b", re.IGNORECASE)


def guid_from_bytes(raw: bytes) -> str:
    """objectGUID's 16 raw bytes (little-endian fields, as AD stores them) -> the usual string form."""
    return str(uuid.UUID(bytes_le=raw))


def normalize_dn(dn: str) -> str:
    """A DN as a lookup key: case and spaces after commas do not matter in AD."""
    return ",".join(part.strip() for part in dn.split(",")).lower()


def _text(raw: dict[str, list[bytes]], name: str) -> str:
    values = raw.get(name) or []
    return values[0].decode("utf-8", "replace") if values else ""


def _texts(raw: dict[str, list[bytes]], name: str) -> list[str]:
    return [v.decode("utf-8", "replace") for v in raw.get(name) or []]


def _int(raw: dict[str, list[bytes]], name: str) -> int:
    text = _text(raw, name)
    return int(text) if text.lstrip("-").isdigit() else 0


def _raw_attributes(entry: dict) -> dict[str, list[bytes]]:
    """Attribute names as requested (AD may answer in another case, and ranged: member;range=0-1499)."""
    out: dict[str, list[bytes]] = {}
    for name, values in (entry.get("raw_attributes") or {}).items():
        base = name.split(";", 1)[0].lower()
        out.setdefault(base, []).extend(values)
    return {canonical: out.get(canonical.lower(), []) for canonical in
            USER_ATTRIBUTES + GROUP_ATTRIBUTES + DELETED_ATTRIBUTES}


def user_from_entry(entry: dict) -> DirectoryUser:
    raw = _raw_attributes(entry)
    return DirectoryUser(
        guid=guid_from_bytes(raw["objectGUID"][0]), dn=entry["dn"], username=_text(raw, "sAMAccountName"),
        upn=_text(raw, "userPrincipalName"), display_name=_text(raw, "displayName"),
        first_name=_text(raw, "givenName"), last_name=_text(raw, "sn"), email=_text(raw, "mail"),
        department=_text(raw, "department"), enabled=not (_int(raw, "userAccountControl") & ACCOUNTDISABLE),
        usn=_int(raw, "uSNChanged"), member_of=_texts(raw, "memberOf"))


def group_from_entry(entry: dict) -> DirectoryGroup:
    raw = _raw_attributes(entry)
    return DirectoryGroup(
        guid=guid_from_bytes(raw["objectGUID"][0]), dn=entry["dn"],
        name=_text(raw, "sAMAccountName") or _text(raw, "cn"), description=_text(raw, "description"),
        usn=_int(raw, "uSNChanged"), members=_texts(raw, "member"))


def guid_of_entry(entry: dict) -> str:
    return guid_from_bytes(_raw_attributes(entry)["objectGUID"][0])


@contextlib.contextmanager
def directory_errors(action: str) -> Iterator[None]:
    """Turn ldap3's exceptions into one typed 503 that says what failed and why."""
    try:
        yield
    except LDAPException as exc:
        log.warning("directory %s failed: %s: %s", action, type(exc).__name__, exc)
        raise Unavailable(what="the directory", reason=f"{action} failed ({type(exc).__name__}: {exc})") from None


class Directory:
    """One configured Active Directory. Connections are short-lived: one per sync run or per login check."""

    def __init__(self, settings: DirectorySettings) -> None:
        if not settings.configured:
            raise Unavailable(what="the directory", reason="none is configured (set VDI_AD_URL and VDI_AD_BASE_DN)")
        self.settings = settings

    # ---- connections ----------------------------------------------------------------------------------
    def _server(self) -> Server:
        s = self.settings
        tls = None
        if s.use_ssl or s.start_tls:
            tls = Tls(validate=ssl.CERT_REQUIRED, ca_certs_file=str(s.ca_file) if s.ca_file else None)
        return Server(s.url, use_ssl=s.use_ssl, tls=tls, get_info=DSA, connect_timeout=s.timeout_seconds)

    def _connection(self, user: str, password: str) -> Connection:
        return Connection(self._server(), user=user, password=password, authentication=SIMPLE,
                          receive_timeout=self.settings.timeout_seconds, read_only=True, raise_exceptions=False,
                          auto_range=True)

    def _open(self, conn: Connection) -> None:
        conn.open()
        if self.settings.start_tls and not self.settings.use_ssl:
            if not conn.start_tls():
                raise Unavailable(what="the directory", reason=f"StartTLS was refused: {conn.result}")

    @contextlib.contextmanager
    def service_connection(self) -> Iterator[Connection]:
        """A connection bound as the service account. Raises Unavailable if the DC cannot be reached or
        refuses the account (the message names the setting to check)."""
        s = self.settings
        conn = self._connection(s.bind_dn, s.bind_password.get_secret_value())
        with directory_errors("connecting"):
            self._open(conn)
            if not conn.bind():
                conn.unbind()
                raise Unavailable(what="the directory", reason="it refused the service account "
                                  f"({conn.result.get('description')}); check VDI_AD_BIND_DN and "
                                  "VDI_AD_BIND_PASSWORD")
        try:
            yield conn
        finally:
            with contextlib.suppress(Exception):
                conn.unbind()

    # ---- reading ------------------------------------------------------------------------------------------
    def watermark(self, conn: Connection) -> tuple[int, str]:
        """(highestCommittedUSN, invocationId of the DC's database). Read from the rootDSE through
        `server.info` (ldap3 refuses highestCommittedUSN as a search attribute once it knows the schema)."""
        with directory_errors("reading the rootDSE"):
            conn.refresh_server_info()
            other = conn.server.info.other if conn.server.info else {}
            highest = int((other.get("highestCommittedUSN") or ["0"])[0])
            invocation = ""
            service = (other.get("dsServiceName") or [""])[0]
            if service and conn.search(service, "(objectClass=*)", BASE, attributes=["invocationId"]):
                raw = conn.response[0].get("raw_attributes", {}).get("invocationId") or []
                if raw:
                    invocation = guid_from_bytes(raw[0])
        return highest, invocation

    def _paged(self, conn: Connection, base: str, search_filter: str, attributes: list[str],
               controls: list | None = None) -> Iterator[dict]:
        with directory_errors(f"searching {base}"):
            entries = conn.extend.standard.paged_search(
                base, search_filter, SUBTREE, attributes=attributes, paged_size=self.settings.page_size,
                controls=controls, generator=True)
            for entry in entries:
                if entry.get("type") == "searchResEntry":
                    yield entry
            result = conn.result
            if result.get("result") not in (0, None):
                raise Unavailable(what="the directory", reason=f"searching {base} with {search_filter} failed: "
                                  f"{result.get('description')} {result.get('message', '')}".strip())

    @staticmethod
    def _since(search_filter: str, since_usn: int | None) -> str:
        if since_usn is None:
            return search_filter
        return f"(&{search_filter}(uSNChanged>={int(since_usn) + 1}))"

    def users(self, conn: Connection, since_usn: int | None = None) -> Iterator[DirectoryUser]:
        """Every user under the users base matching the user filter; only those changed after `since_usn`
        when it is given."""
        for entry in self._paged(conn, self.settings.users_base, self._since(self.settings.user_filter, since_usn),
                                 USER_ATTRIBUTES):
            yield user_from_entry(entry)

    def groups(self, conn: Connection, since_usn: int | None = None) -> Iterator[DirectoryGroup]:
        """Every group under the groups base with its direct members (DNs)."""
        for entry in self._paged(conn, self.settings.groups_base,
                                 self._since(self.settings.group_filter, since_usn), GROUP_ATTRIBUTES):
            yield group_from_entry(entry)

    def user_guids(self, conn: Connection) -> set[str]:
        """objectGUIDs of every user in scope (one light paged search): what is missing was deleted, moved out
        of scope or no longer matches the filter. Needs no right to read the Deleted Objects container."""
        return {guid_of_entry(e) for e in self._paged(conn, self.settings.users_base,
                                                              self.settings.user_filter, ["objectGUID"])}

    def group_guids(self, conn: Connection) -> set[str]:
        return {guid_of_entry(e) for e in self._paged(conn, self.settings.groups_base,
                                                              self.settings.group_filter, ["objectGUID"])}

    def deleted_since(self, conn: Connection, since_usn: int) -> list[DeletedObject]:
        """Users and groups deleted after `since_usn` (tombstones keep their objectGUID; Show Deleted control).
        AD shows tombstones only to accounts allowed to list CN=Deleted Objects (administrators by default);
        for others this is empty, and `user_guids`/`group_guids` find the deletions."""
        search_filter = (f"(&(isDeleted=TRUE)(uSNChanged>={int(since_usn) + 1})"
                         "(|(objectClass=user)(objectClass=group)))")
        out = []
        for entry in self._paged(conn, self.settings.base_dn, search_filter, DELETED_ATTRIBUTES,
                                 controls=[(SHOW_DELETED_OID, True, None)]):
            raw = _raw_attributes(entry)
            if not raw["objectGUID"]:
                continue
            classes = {c.lower() for c in _texts(raw, "objectClass")}
            kind = "group" if "group" in classes else "user"
            out.append(DeletedObject(guid=guid_from_bytes(raw["objectGUID"][0]), kind=kind,
                                     name=_text(raw, "sAMAccountName")))
        return out

    def find_user(self, conn: Connection, username: str, domain: str | None) -> DirectoryUser | None:
        """The one user a login name designates: sAMAccountName (bare or DOMAIN\\user, or user@<this realm>)
        or a userPrincipalName. None when no user, or more than one, matches."""
        name = escape_filter_chars(username)
        alternatives = []
        if domain is None or self.settings.matches_domain(domain):
            alternatives.append(f"(sAMAccountName={name})")
        if domain is not None and "\\" not in domain:
            alternatives.append(f"(userPrincipalName={escape_filter_chars(f'{username}@{domain}')})")
        if not alternatives:
            return None
        search_filter = f"(&{self.settings.user_filter}(|{''.join(alternatives)}))"
        found = list(self._paged(conn, self.settings.users_base, search_filter, USER_ATTRIBUTES))
        if len(found) != 1:
            return None
        return user_from_entry(found[0])

    # ---- passwords ------------------------------------------------------------------------------------------
    def check_password(self, user_dn: str, password: str) -> BindOutcome:
        """Bind as the user (by the DN the search found, never by the text the user typed). An empty password
        is refused here: LDAP would treat it as an anonymous bind and report success."""
        if not password:
            return BindOutcome.WRONG_CREDENTIALS
        conn = self._connection(user_dn, password)
        with directory_errors("checking a password"):
            self._open(conn)
            try:
                if conn.bind():
                    return BindOutcome.OK
                result = conn.result
            finally:
                with contextlib.suppress(Exception):
                    conn.unbind()
        if result.get("description") != "invalidCredentials":
            raise Unavailable(what="the directory", reason=f"the password check failed: {result.get('description')}")
        match = _SUBCODE.search(result.get("message", ""))
        return _BIND_SUBCODES.get(match.group(1).lower() if match else "", BindOutcome.WRONG_CREDENTIALS)


def directory_from_settings(settings: DirectorySettings | None = None) -> Directory:
    from manager.identity.settings import get_directory_settings

    return Directory(settings or get_directory_settings())
