"""`vdi`: the one command-line entry point (serve, worker, node, db, demo, image, …)."""
from __future__ import annotations

import argparse
import sys
import threading
from collections.abc import Callable


def _cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from manager.config import ensure_data_dir, get_settings

    settings = get_settings()
    ensure_data_dir(settings.data_dir)  # 0711: its secrets are 0600, the storage inside it stays reachable
    host = args.host or settings.host
    port = args.port or settings.port
    if args.upgrade:
        _upgrade_db()
    from manager.metrics import reset_multiprocess_dir

    reset_multiprocess_dir()  # the workers' metrics start from zero
    print(f"VDI manager on http://{host}:{port}: admin console http://{host}:{port}/admin, "
          f"API docs http://{host}:{port}/docs", flush=True)
    uvicorn.run("manager.app:create_app", factory=True, host=host, port=port, workers=args.workers,
                log_level=settings.log_level.lower(), access_log=args.access_log,
                # JSON logs: uvicorn's loggers go to the root logger's JSON handler (manager/logs.py)
                **({"log_config": None} if settings.log_format == "json" else {}),
                **proxy_options(settings.trusted_proxies))
    return 0


def proxy_options(trusted_proxies: str) -> dict:
    """uvicorn's handling of X-Forwarded-For/-Proto: only from the configured reverse proxies (VDI_TRUSTED_PROXIES,
    comma-separated addresses or networks). uvicorn's own default trusts 127.0.0.1, so any local process could
    claim to be any client (and escape the login's per-address limits); with no proxy configured the headers are
    ignored and the socket's peer is the client."""
    proxies = [p.strip() for p in trusted_proxies.split(",") if p.strip()]
    return {"proxy_headers": bool(proxies), "forwarded_allow_ips": proxies or ""}


def _cmd_worker(args: argparse.Namespace) -> int:
    from manager.config import get_settings
    from manager.jobs import celery_app, load_task_modules, run_recovery_loop

    settings = get_settings()
    if settings.embedded_jobs:
        print("vdi worker: VDI_REDIS_URL is not set. The embedded default runs jobs inside `vdi serve`; "
              "set VDI_REDIS_URL=redis://127.0.0.1:6379/0 to run separate Celery workers.", file=sys.stderr)
        return 2
    from manager import db

    db.configure(settings.effective_database_url)
    load_task_modules()
    argv = ["worker", f"--loglevel={args.loglevel}", f"--concurrency={args.concurrency}", "--without-gossip",
            "--without-mingle", "--pool=threads"]
    if args.hostname:
        argv.append(f"--hostname={args.hostname}")
    from event_manager.service import start_notifications

    # Workers send notifications too: every dispatcher claims outbox rows with SKIP LOCKED and a lease, so a worker
    # and the managers share them without sending one twice (event_manager/notifications.py).
    notifier = start_notifications(settings)
    # Workers settle jobs whose runner died too (each by one compare-and-swap, so managers and workers share it).
    stop_recovery = threading.Event()
    threading.Thread(target=run_recovery_loop, args=(stop_recovery,), name="vdi-job-recovery", daemon=True).start()
    try:
        celery_app().worker_main(argv)
    finally:
        stop_recovery.set()
        notifier.stop()
    return 0


def _cmd_planner(args: argparse.Namespace) -> int:
    from planner.cli import main as planner_main

    return planner_main(args.rest)


def _cmd_node(args: argparse.Namespace) -> int:
    from hypervisor_node.agent import main as node_main

    return node_main(args.rest) or 0


def _upgrade_db(url: str | None = None) -> str:
    from manager.config import ensure_data_dir, get_settings
    from manager.migrate import upgrade

    settings = get_settings()
    url = url or settings.effective_database_url
    if url.startswith("sqlite:///"):
        ensure_data_dir(settings.data_dir)
    upgrade(url)
    _bootstrap_admin(url)
    return url


def _bootstrap_admin(url: str) -> None:
    """A new database gets its administrator, admin@local (SuperUser), at once: its password is VDI_ADMIN_PASSWORD,
    or generated into <data_dir>/admin-password (mode 0600)."""
    from sqlalchemy.exc import IntegrityError

    from manager import db
    from manager.bootstrap import bootstrap_admin
    from manager.config import get_settings

    settings = get_settings()
    password_file = settings.data_dir / "admin-password"
    db.configure(url)
    try:
        with db.session_scope() as session:
            created = bootstrap_admin(session, settings.admin_password or None, password_file=password_file)
    except IntegrityError:  # another manager starting on the same new database made it first
        return
    if created:
        told = "VDI_ADMIN_PASSWORD" if settings.admin_password else str(password_file)
        print(f"created the administrator admin@local (SuperUser); its password is in {told}", flush=True)


def _cmd_db(args: argparse.Namespace) -> int:
    from manager.config import get_settings
    from manager.migrate import current, downgrade

    url = args.url or get_settings().effective_database_url
    if args.action == "upgrade":
        _upgrade_db(url)
        print(f"database at {current(url)} ({_safe(url)})")
    elif args.action == "downgrade":
        downgrade(url, args.revision or "base")
        print(f"database at {current(url)} ({_safe(url)})")
    else:
        print(current(url) or "empty")
    return 0


def _safe(url: str) -> str:
    """A URL without its password, for messages."""
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


def _cmd_restore_admin(args: argparse.Namespace) -> int:
    from manager import db
    from manager.bootstrap import restore_admin
    from manager.config import get_settings

    settings = get_settings()
    db.configure(settings.effective_database_url)
    password_file = settings.data_dir / "admin-password"
    with db.session_scope() as session:
        restore_admin(session, settings.admin_password or None, password_file=password_file)
    told = "VDI_ADMIN_PASSWORD" if settings.admin_password else str(password_file)
    print(f"admin@local is enabled and a SuperUser again; its password is in {told}; its old tokens are revoked")
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from manager.demo import seed_demo

    _upgrade_db()
    summary = seed_demo(real_guests=args.real_guests, image_variant=args.image_variant)
    for line in summary:
        print(line)
    return 0


def _cmd_image(args: argparse.Namespace) -> int:
    if args.action == "build-demo":
        from image_manager.demo_image import main as build_demo

        return build_demo(args.rest) or 0
    return 2


def _cmd_directory(args: argparse.Namespace) -> int:
    import json

    from core.errors import VdiError
    from manager import db
    from manager.config import get_settings
    from manager.identity.directory import Directory
    from manager.identity.settings import get_directory_settings
    from manager.identity.sync import sync_directory

    db.configure(get_settings().effective_database_url)
    try:
        directory = Directory(get_directory_settings())
        with db.session_scope() as session:
            result = sync_directory(session, directory, full=True if args.full else None, dry_run=args.dry_run,
                                    actor="cli")
            summary = result.summary()
    except VdiError as exc:
        print(f"vdi directory sync: {exc.message}", file=sys.stderr)
        return 1
    print(json.dumps(summary, indent=2, default=str))
    return 0


def _cmd_spice_proxy(args: argparse.Namespace) -> int:
    import asyncio

    from broker.spice_proxy import SpiceProxy, known_display_addresses, parse_port_range
    from manager import db
    from manager.config import get_settings
    from manager.logs import configure_logging

    settings = get_settings()
    configure_logging(settings.log_level, settings.log_format)
    db.configure(settings.effective_database_url)
    host, _, port = args.listen.rpartition(":")

    def allowed() -> set[str]:
        with db.session_scope() as session:
            return known_display_addresses(session)

    async def run() -> None:
        proxy = SpiceProxy(allowed, parse_port_range(settings.display_ports))
        bound = await proxy.start(host.strip("[]") or "0.0.0.0", int(port))
        print(f"SPICE proxy on {bound[0]}:{bound[1]}: CONNECT to the hosts' display addresses, ports "
              f"{settings.display_ports}", flush=True)
        await proxy.serve_forever()

    asyncio.run(run())
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vdi", description="VDI manager for KVM desktops")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("serve", help="run the manager (API, admin console, portal)",
                       description="Run the manager's HTTP server. Configuration comes from VDI_* variables.")
    p.add_argument("--host", help="listen address (VDI_HOST, default 127.0.0.1)")
    p.add_argument("--port", type=int, help="listen port (VDI_PORT, default 8000)")
    p.add_argument("--workers", type=int, default=1, help="uvicorn worker processes (needs Postgres + Redis)")
    p.add_argument("--no-upgrade", dest="upgrade", action="store_false", help="do not migrate the database first")
    p.add_argument("--access-log", action="store_true", help="log every request")
    p.set_defaults(func=_cmd_serve)

    p = sub.add_parser("worker", help="run a Celery job worker (needs VDI_REDIS_URL)",
                       description="Run a Celery worker that executes jobs (image copies, bulk provisioning, ...).")
    p.add_argument("--concurrency", type=int, default=4)
    p.add_argument("--loglevel", default="INFO")
    p.add_argument("--hostname", help="Celery node name")
    p.set_defaults(func=_cmd_worker)

    p = sub.add_parser("node", help="run a hypervisor node agent", add_help=False,
                       description="Run the node agent of one KVM host (see `vdi node --help`).")
    p.set_defaults(func=_cmd_node, passthrough=True)

    p = sub.add_parser("planner", help="measure how many users a platform supports", add_help=False,
                       description="Score samples, run workloads, sweep user counts (see `vdi planner --help`).")
    p.set_defaults(func=_cmd_planner, passthrough=True)

    p = sub.add_parser("db", help="database migrations", description="Apply or inspect Alembic migrations.")
    p.add_argument("action", choices=["upgrade", "downgrade", "current"])
    p.add_argument("revision", nargs="?", help="target revision (downgrade; default base)")
    p.add_argument("--url", help="database URL (default VDI_DATABASE_URL or the embedded SQLite file)")
    p.set_defaults(func=_cmd_db)

    p = sub.add_parser("restore-admin", help="make admin@local an enabled SuperUser with a new password",
                       description="Break glass when no enabled SuperUser remains: admin@local is created or "
                                   "re-enabled, given the SuperUser role and a new password (VDI_ADMIN_PASSWORD, or "
                                   "generated into $VDI_DATA_DIR/admin-password, mode 0600); its old tokens are "
                                   "revoked.")
    p.set_defaults(func=_cmd_restore_admin)

    p = sub.add_parser("admin", help="the local administrator: `vdi admin reset-password` (= restore-admin)",
                       description="reset-password: the same break glass as `vdi restore-admin`.")
    p.add_argument("action", choices=["reset-password"])
    p.set_defaults(func=_cmd_restore_admin)

    p = sub.add_parser("demo", help="seed demo data (idempotent)",
                       description="Create a demo cluster, hosts, a template, a pool, desktops and users. "
                                   "Running it again keeps what exists.")
    p.add_argument("--real-guests", choices=["auto", "yes", "no"], default="auto",
                   help="boot real QEMU guests when libvirtd is usable (auto), always, or never")
    p.add_argument("--image-variant", choices=["console", "planner"], default="console",
                   help="the template's demo image: the text console (default), or the planner desktop with a "
                        "framebuffer and the planner's applications (docs/planner.md)")
    p.set_defaults(func=_cmd_demo)

    p = sub.add_parser("image", help="image tools", add_help=True,
                       description="Image tools. build-demo: build (once) and cache the tiny demo desktop template.")
    p.add_argument("action", choices=["build-demo"])
    p.set_defaults(func=_cmd_image, passthrough=True)

    p = sub.add_parser("spice-proxy", help="run an HTTP CONNECT proxy to the desktops' displays",
                       description="Tunnel SPICE clients outside the hypervisors' network to the hosts' display "
                                   "addresses (and only there). Clients find it through VDI_SPICE_PROXY.")
    p.add_argument("--listen", default="0.0.0.0:3128", help="address:port to listen on (default 0.0.0.0:3128)")
    p.set_defaults(func=_cmd_spice_proxy)

    p = sub.add_parser("directory", help="Active Directory sync",
                       description="Sync users, groups and memberships from the directory set by VDI_AD_*.")
    directory_sub = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    d = directory_sub.add_parser("sync", help="sync now (incremental unless --full or a full one is due)",
                                 description="Sync now and print what changed as JSON.")
    d.add_argument("--full", action="store_true", help="read every user and group (detects deletions by GUID)")
    d.add_argument("--dry-run", action="store_true", help="print the diff (added, changed, disabled, removed); "
                                                           "write nothing")
    d.set_defaults(func=_cmd_directory)

    from vdi_client.cli import add_commands

    add_commands(sub)  # login, desktops, pools, hosts, policies, events, jobs: the API's client (docs/sdk-cli.md)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    # `node`, `image` and `planner` hand their own options (including --help) to the program they run.
    args, rest = parser.parse_known_args(argv)
    if rest and not getattr(args, "passthrough", False):
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    args.rest = rest
    func: Callable[[argparse.Namespace], int] = args.func
    return func(args)


if __name__ == "__main__":
    sys.exit(main())
