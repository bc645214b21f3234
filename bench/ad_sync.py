"""Directory sync speed against a real Samba AD DC with 1,000+ users, into a scratch Postgres database.

    sudo .venv/bin/python bench/ad_sync.py [--users 1000] [--changes 60]

Starts its own DC with scripts/test-ad.sh (AD_DIR=/tmp/vdi-bench-ad, so the test DC's snapshot is never
touched; port 389 must be free: stop the test DC first), restores the seeded 200 users, adds --users more over
LDAPS (ldap3 add with unicodePwd) in OU=Bench with nested groups, then times a full sync, an incremental sync
after --changes modifications (attribute changes, disables, membership changes) and an incremental sync with
nothing to do. Prints one JSON object.
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import ssl
import subprocess
import sys
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ldap3 import MODIFY_ADD, MODIFY_REPLACE, Connection, Server, Tls  # noqa: E402
from sqlalchemy import func, select, text  # noqa: E402

SCRIPT = ROOT / "scripts" / "test-ad.sh"
PG_ADMIN_URL = os.environ.get("VDI_TEST_PG_ADMIN_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
GROUPS = 10


def script(action: str, ad_dir: str) -> dict[str, str]:
    env = {**os.environ, "AD_DIR": ad_dir, "AD_MODEL": os.environ.get("AD_MODEL", "single"), "AD_USERS": "200"}
    done = subprocess.run(["bash", str(SCRIPT), action], capture_output=True, text=True, env=env, timeout=900,
                          stdin=subprocess.DEVNULL)
    if done.returncode != 0:
        sys.exit(f"scripts/test-ad.sh {action} failed:\n{done.stderr[-2000:]}")
    return {k: shlex.split(v)[0] for k, _, v in (line[7:].partition("=") for line in done.stdout.splitlines()
                                                 if line.startswith("export "))}


def admin_connection(ad: dict[str, str]) -> Connection:
    tls = Tls(validate=ssl.CERT_REQUIRED, ca_certs_file=ad["AD_CA_FILE"])
    return Connection(Server(ad["AD_LDAPS_URL"], use_ssl=True, tls=tls), ad["AD_BIND_DN"], ad["AD_BIND_PASSWORD"],
                      auto_bind=True, raise_exceptions=True)


def add_users(conn: Connection, ad: dict[str, str], count: int) -> float:
    """OU=Bench with bench-000.., groups bench-g0..g9 (users round-robin) nested in bench-all, which is in
    vdi-users: three levels, as in the seeded data."""
    base = ad["AD_BASE_DN"]
    ou = f"OU=Bench,OU=Corp,{base}"
    password = f'"{ad["AD_USER_PASSWORD"]}"'.encode("utf-16-le")
    started = time.perf_counter()
    conn.add(ou, ["top", "organizationalUnit"])
    group_dns = [f"CN=bench-g{i},{ou}" for i in range(GROUPS)]
    for dn in group_dns + [f"CN=bench-all,{ou}"]:
        conn.add(dn, ["top", "group"], {"sAMAccountName": dn.split(",")[0][3:]})
    members: list[list[str]] = [[] for _ in range(GROUPS)]
    for i in range(count):
        name = f"bench-{i:04d}"
        dn = f"CN={name},{ou}"
        conn.add(dn, ["top", "person", "organizationalPerson", "user"],
                 {"sAMAccountName": name, "userPrincipalName": f"{name}@{ad['AD_REALM'].lower()}",
                  "givenName": "Bench", "sn": f"N{i:04d}", "displayName": f"Bench User {i}", "mail": f"{name}@example.com",
                  "department": f"dept-{i % 7}", "unicodePwd": password, "userAccountControl": 512})
        members[i % GROUPS].append(dn)
    for dn, group_members in zip(group_dns, members):
        conn.modify(dn, {"member": [(MODIFY_ADD, group_members)]})
    conn.modify(f"CN=bench-all,{ou}", {"member": [(MODIFY_ADD, group_dns)]})
    conn.modify(f"CN=vdi-users,OU=Groups,OU=Corp,{base}", {"member": [(MODIFY_ADD, [f"CN=bench-all,{ou}"])]})
    return time.perf_counter() - started


def make_changes(conn: Connection, ad: dict[str, str], count: int, users: int) -> int:
    ou = f"OU=Bench,OU=Corp,{ad['AD_BASE_DN']}"
    step = max(1, users // count)
    picked = list(range(0, users, step))[:count]
    for n, i in enumerate(picked):
        dn = f"CN=bench-{i:04d},{ou}"
        if n % 3 == 0:
            conn.modify(dn, {"userAccountControl": [(MODIFY_REPLACE, [514])]})
        elif n % 3 == 1:
            conn.modify(dn, {"department": [(MODIFY_REPLACE, ["moved"])]})
        else:
            conn.modify(f"CN=bench-g{(i + 1) % GROUPS},{ou}", {"member": [(MODIFY_ADD, [dn])]})
    return len(picked)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--users", type=int, default=1000, help="users to add on top of the seeded 200")
    parser.add_argument("--changes", type=int, default=60, help="changes before the incremental sync")
    parser.add_argument("--ad-dir", default=os.environ.get("BENCH_AD_DIR", "/tmp/vdi-bench-ad"))
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("bench/ad_sync.py needs root (it runs a Samba AD DC on ports 88/389/636)")

    from manager import db
    from manager.db import make_engine
    from manager.identity.directory import Directory
    from manager.identity.settings import DirectorySettings
    from manager.identity.sync import sync_directory
    from manager.migrate import upgrade
    from manager.models import Group, User, UserGroupMembership

    script("start", args.ad_dir)
    ad = script("reset", args.ad_dir)  # the seeded 200 users, nothing from an earlier run
    conn = admin_connection(ad)
    create_s = add_users(conn, ad, args.users)

    name = f"vdi_bench_{uuid.uuid4().hex[:8]}"
    admin = make_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as c:
        c.execute(text(f'CREATE DATABASE "{name}"'))
    url = PG_ADMIN_URL.rsplit("/", 1)[0] + "/" + name
    try:
        upgrade(url)
        engine = db.configure(url)
        settings = DirectorySettings(url=ad["AD_LDAPS_URL"], bind_dn=f"svc-vdi@{ad['AD_REALM'].lower()}",
                                     bind_password=ad["AD_USER_PASSWORD"], base_dn=ad["AD_BASE_DN"],
                                     ca_file=ad["AD_CA_FILE"], role_map={"vdi-admins": "SuperUser"})
        directory = Directory(settings)

        def timed_sync(**kwargs) -> tuple[float, dict]:
            started = time.perf_counter()
            with db.session_scope() as session:
                summary = sync_directory(session, directory, **kwargs).summary(limit=0)
            return time.perf_counter() - started, summary

        full_s, full = timed_sync(full=True)
        changed = make_changes(conn, ad, args.changes, args.users)
        incremental_s, incremental = timed_sync(full=False)
        noop_s, _ = timed_sync(full=False)
        with db.session_scope() as session:
            users = session.scalar(select(func.count()).select_from(User))
            groups = session.scalar(select(func.count()).select_from(Group))
            memberships = session.scalar(select(func.count()).select_from(UserGroupMembership))
        engine.dispose()
    finally:
        with admin.connect() as c:
            c.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()
        conn.unbind()
        script("stop", args.ad_dir)

    print(json.dumps({
        "users": users, "groups": groups, "direct_memberships": memberships,
        "full_sync_s": round(full_s, 3), "incremental_sync_s": round(incremental_s, 3),
        "incremental_changes": changed, "incremental_read": incremental["read"],
        "incremental_disabled": incremental["users"]["disabled"]["count"],
        "noop_incremental_sync_s": round(noop_s, 3), "create_users_ldaps_s": round(create_s, 2),
        "full_read": full["read"],
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
