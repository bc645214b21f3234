"""The administrator commands of `vdi` (login, desktops, pools, hosts, policies, events, jobs), on vdi_client.

`manager.cli` adds them to the `vdi` entry point with `add_commands`. Output is a table, or JSON with --json;
job progress goes to stderr as a bar when stderr is a terminal. An error from the server ends the command with
its message and exit status 1; a bulk action reports each desktop and exits 1 if any failed.
"""
from __future__ import annotations

import argparse
import getpass
import json
import re
import sys
from collections.abc import Callable, Iterable, Sequence
from typing import Any, TextIO

from vdi_client import config
from vdi_client import models as m
from vdi_client.client import Client
from vdi_client.errors import ApiError, JobFailed, JobTimeout, VdiClientError

Handler = Callable[[argparse.Namespace, Client], int]


# ---- output ----------------------------------------------------------------------------------------------------
def table(rows: Sequence[dict[str, Any]], columns: Sequence[str], out: TextIO = sys.stdout) -> None:
    """Rows as aligned columns under a header (nothing but the header when there are none)."""
    cells = [[_cell(row.get(c)) for c in columns] for row in rows]
    widths = [max([len(c), *(len(r[i]) for r in cells)]) for i, c in enumerate(columns)]
    print("  ".join(c.upper().ljust(w) for c, w in zip(columns, widths)).rstrip(), file=out)
    for r in cells:
        print("  ".join(v.ljust(w) for v, w in zip(r, widths)).rstrip(), file=out)


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def emit(args: argparse.Namespace, rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> None:
    if args.json:
        print(json.dumps(list(rows), indent=2, default=str))
    else:
        table(rows, columns)


def dump(value: Any) -> dict[str, Any]:
    return value.model_dump(mode="json") if isinstance(value, m.Resource) else value


class ProgressBar:
    """A one-line bar on stderr, drawn only when stderr is a terminal (logs and pipes get nothing)."""

    WIDTH = 30

    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream or sys.stderr
        self.enabled = self.stream.isatty()
        self._drawn = False

    def show(self, fraction: float, label: str) -> None:
        if not self.enabled:
            return
        fraction = min(max(fraction, 0.0), 1.0)
        filled = int(round(fraction * self.WIDTH))
        self.stream.write(f"\r[{'#' * filled}{'.' * (self.WIDTH - filled)}] {fraction:4.0%} {label[:60]}\x1b[K")
        self.stream.flush()
        self._drawn = True

    def job(self, job: m.Job) -> None:
        eta = f", about {job.eta_seconds:.0f} s left" if job.eta_seconds else ""
        self.show(job.fraction, f"{job.kind} {job.state}{eta}")

    def close(self) -> None:
        if self._drawn:
            self.stream.write("\n")
            self.stream.flush()
            self._drawn = False


# ---- helpers ---------------------------------------------------------------------------------------------------
UUID = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")
SEARCH_OBJECT = {"desktop": "Vms", "pool": "Pools", "host": "Hosts", "template": "Templates", "cluster": "Clusters"}


def quoted(value: str) -> str:
    """A value for the search language (quoted unless it is one plain word)."""
    if re.fullmatch(r"[A-Za-z0-9._@-]+", value):
        return value
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def resolve(client: Client, kind: str, ref: str) -> Any:
    """The object of `kind` named `ref` (an id, or a name)."""
    namespace = getattr(client, kind + "s")
    if UUID.match(ref):
        return namespace.get(ref)
    found = list(client.search.iter(f"{SEARCH_OBJECT[kind]}: name = {quoted(ref)}", page_size=10))
    exact = [o for o in found if getattr(o, "name", None) == ref]
    if len(exact) != 1:
        raise VdiClientError(f"no {kind} is named {ref!r}" if not exact else f"{len(exact)} {kind}s are named {ref!r}; "
                             "give the id")
    return exact[0]


def desktops_of(args: argparse.Namespace, client: Client) -> list[m.Desktop]:
    """The desktops a command acts on: every match of --search (all pages, read before acting, so that the
    action does not move desktops in or out of the pages still to read), or the ones named."""
    if args.search:
        return search_desktops(client, args.search)
    if not args.desktops:
        raise VdiClientError("name the desktops, or select them with --search QUERY")
    return [resolve(client, "desktop", ref) for ref in args.desktops]


def search_desktops(client: Client, query: str) -> list[m.Desktop]:
    """Every desktop a query finds (all its pages); an error for a query of other objects."""
    found = []
    for item in client.search.iter(query, page_size=500):
        if not isinstance(item, m.Desktop):
            raise VdiClientError(f"the query finds {type(item).__name__.lower()}s, not desktops; start it with `Vms:`")
        found.append(item)
    return found


def parse_settings(pairs: Iterable[str]) -> dict[str, Any]:
    """key=value pairs; a value is read as JSON when it is JSON (numbers, true, null, "text"), else as text."""
    values: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            raise VdiClientError(f"--set {pair!r}: write key=value")
        try:
            values[key] = json.loads(raw)
        except ValueError:
            values[key] = raw
    return values


def wait_job(args: argparse.Namespace, client: Client, job: m.Job) -> m.Job:
    bar = ProgressBar()
    try:
        return client.jobs.wait(job, timeout=getattr(args, "timeout", None), progress=bar.job)
    finally:
        bar.close()


# ---- commands --------------------------------------------------------------------------------------------------
def cmd_login(args: argparse.Namespace) -> int:
    url = args.url or _stored_url()
    if not url:
        raise VdiClientError("give the manager's address: vdi login --url https://vdi.example.com")
    username = args.username or input("Username: ")
    password = sys.stdin.readline().rstrip("\n") if args.password_stdin else getpass.getpass("Password: ")
    with Client(url) as client:
        client.auth.login(username, password)
        minted = client.auth.create_token(name="vdi command line", lifetime_days=args.days, password=password)
        client.auth.logout()  # the login's session is not needed any more; the token is independent of it
    path = config.save(url, minted["token"])
    print(f"logged in to {url} as {username}; the token (expires {minted['expires_at']}) is in {path}")
    return 0


def _stored_url() -> str | None:
    try:
        return config.load().url
    except config.NotConfigured:
        return None


DESKTOP_COLUMNS = ("name", "power_state", "task_state", "host", "pool", "ip", "logged_in_user")


def cmd_desktops_list(args: argparse.Namespace, client: Client) -> int:
    query = args.search or "Vms: sortby name"
    desktops = search_desktops(client, query)
    hosts = {h.id: h.name for h in client.hosts.iter()} if not args.json else {}
    pools = {p.id: p.name for p in client.pools.iter()} if not args.json else {}
    rows = [dump(d) if args.json else {**dump(d), "host": hosts.get(d.host_id or ""), "pool": pools.get(d.pool_id or "")}
            for d in desktops]
    emit(args, rows, DESKTOP_COLUMNS)
    return 0


def cmd_desktops_act(args: argparse.Namespace, client: Client) -> int:
    """start/stop/reboot on each desktop; reset/migrate start a job each, then wait for them."""
    desktops = desktops_of(args, client)
    results: list[dict[str, Any]] = []
    jobs: list[tuple[m.Desktop, m.Job]] = []
    for desktop in desktops:
        try:
            if args.action == "migrate":
                jobs.append((desktop, client.desktops.migrate(desktop.id, host_id=args.host_id)))
            elif args.action == "reset":
                jobs.append((desktop, client.desktops.reset(desktop.id)))
            else:
                after = getattr(client.desktops, args.action)(desktop.id)
                results.append({"desktop": desktop.name, "id": desktop.id, "ok": True,
                                "result": f"{args.action}: {after.power_state}"})
        except ApiError as exc:
            results.append({"desktop": desktop.name, "id": desktop.id, "ok": False, "result": exc.detail,
                            "error": exc.code, "status": exc.status})
    if jobs:
        results += _wait_all(args, client, jobs)
    emit(args, results, ("desktop", "ok", "result"))
    failed = sum(not r["ok"] for r in results)
    if failed:
        print(f"vdi desktops {args.action}: {failed} of {len(results)} failed", file=sys.stderr)
    elif not results:
        print(f"vdi desktops {args.action}: no desktop matches", file=sys.stderr)
    return 1 if failed else 0


def _wait_all(args: argparse.Namespace, client: Client, jobs: list[tuple[m.Desktop, m.Job]]) -> list[dict[str, Any]]:
    if args.no_wait:
        return [{"desktop": d.name, "id": d.id, "ok": True, "result": f"job {j.id} {j.state}", "job_id": j.id}
                for d, j in jobs]
    bar = ProgressBar()
    out = []
    try:
        for done, (desktop, job) in enumerate(jobs):
            def show(current: m.Job, done: int = done) -> None:
                bar.show((done + current.fraction) / len(jobs), f"{done}/{len(jobs)} done; {desktop.name}")
            try:
                final = client.jobs.wait(job, timeout=args.timeout, progress=show)
                out.append({"desktop": desktop.name, "id": desktop.id, "ok": True, "result": f"job {final.state}",
                            "job_id": job.id})
            except (JobFailed, JobTimeout) as exc:
                out.append({"desktop": desktop.name, "id": desktop.id, "ok": False, "result": str(exc),
                            "job_id": job.id})
    finally:
        bar.close()
    return out


POOL_COLUMNS = ("name", "pool_type", "size", "prestarted", "template_id", "id")


def cmd_pools_list(args: argparse.Namespace, client: Client) -> int:
    emit(args, [dump(p) for p in client.pools.iter()], POOL_COLUMNS)
    return 0


def cmd_pools_create(args: argparse.Namespace, client: Client) -> int:
    fields = parse_settings(args.set or [])
    fields.update(name=args.name, template_id=resolve(client, "template", args.template).id, size=args.size,
                  prestarted=args.prestarted)
    if args.cluster:
        fields["cluster_id"] = resolve(client, "cluster", args.cluster).id
    pool = client.pools.create(**fields)
    emit(args, [dump(pool)], POOL_COLUMNS)
    return 0


def cmd_pools_resize(args: argparse.Namespace, client: Client) -> int:
    pool = resolve(client, "pool", args.pool)
    job = client.pools.resize(pool.id, args.size, prestarted=args.prestarted)
    if not args.no_wait:
        job = wait_job(args, client, job)
    emit(args, [dump(job)], ("id", "kind", "state", "progress", "description"))
    return 0


def cmd_pools_edit(args: argparse.Namespace, client: Client) -> int:
    if not args.set:
        raise VdiClientError("say what to change: --set key=value (e.g. --set prestarted=2 --set description=...)")
    pool = resolve(client, "pool", args.pool)
    emit(args, [dump(client.pools.update(pool.id, **parse_settings(args.set)))], POOL_COLUMNS)
    return 0


HOST_COLUMNS = ("name", "status", "cpu_usage", "mem_usage", "active_desktops", "address", "id")


def cmd_hosts_list(args: argparse.Namespace, client: Client) -> int:
    emit(args, [dump(h) for h in client.hosts.iter()], HOST_COLUMNS)
    return 0


def cmd_hosts_maintenance(args: argparse.Namespace, client: Client) -> int:
    host = resolve(client, "host", args.host)
    if args.activate:
        emit(args, [dump(client.hosts.activate(host.id))], HOST_COLUMNS)
        return 0
    after = client.hosts.maintenance(host.id, reason=args.reason, drain=args.drain)
    drain_job = (after.model_extra or {}).get("drain_job_id")
    if drain_job and not args.no_wait:
        wait_job(args, client, client.jobs.get(drain_job))
        after = client.hosts.get(host.id)
    emit(args, [dump(after)], HOST_COLUMNS)
    return 0


DECISION_COLUMNS = ("policy", "action", "desktop", "host", "target_host", "reason")


def cmd_policies_run(args: argparse.Namespace, client: Client) -> int:
    """One round now: its decisions (and, unless a dry run, the jobs carrying them out); exit 1 if the server
    refused any of them."""
    cluster_id = resolve(client, "cluster", args.cluster).id if args.cluster else None
    result = client.policies.run(dry_run=args.dry_run, cluster_id=cluster_id)
    failed = result.get("failed") or []
    if args.json:
        print(json.dumps(result, indent=2, default=str))
    else:
        decisions = result.get("decisions") or []
        table(decisions, DECISION_COLUMNS)
        what = "would be carried out (dry run)" if result.get("dry_run") else f"jobs: {len(result.get('jobs') or [])}"
        print(f"{len(decisions)} decisions; {what}", file=sys.stderr)
        for refused in failed:
            print(f"refused: {refused.get('action')} {refused.get('desktop') or refused.get('host')}: "
                  f"{refused.get('error')}", file=sys.stderr)
    return 1 if failed else 0


EVENT_COLUMNS = ("id", "time", "severity", "code", "message")


def _print_event(args: argparse.Namespace, event: m.Event) -> None:
    if args.json:
        print(json.dumps(dump(event), default=str), flush=True)
    else:
        print(f"{event.time.isoformat(timespec='seconds')}  {event.severity:<8} {event.code:<28} {event.message}",
              flush=True)


def cmd_events_tail(args: argparse.Namespace, client: Client) -> int:
    after = args.after_id
    if after is None:
        recent = client.events.list(per_page=max(args.lines, 1)).items  # newest first
        for event in reversed(recent[:args.lines]):
            _print_event(args, event)
        after = recent[0].id if recent else 0
    if not args.follow:
        return 0
    try:
        for event in client.events.stream(after_id=after):
            _print_event(args, event)
    except KeyboardInterrupt:
        return 0
    return 0


JOB_COLUMNS = ("id", "kind", "state", "progress", "error", "description")


def cmd_jobs_wait(args: argparse.Namespace, client: Client) -> int:
    job = wait_job(args, client, client.jobs.get(args.job_id))
    emit(args, [dump(job)], JOB_COLUMNS)
    return 0


def cmd_jobs_list(args: argparse.Namespace, client: Client) -> int:
    emit(args, [dump(j) for j in client.jobs.list(per_page=args.limit, state=args.state).items], JOB_COLUMNS)
    return 0


# ---- wiring ----------------------------------------------------------------------------------------------------
def guarded(command: str, entry: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """`entry` with the client's errors turned into a message on stderr and exit status 1: the server's message,
    its HTTP status and code for an ApiError."""

    def guarded_entry(args: argparse.Namespace) -> int:
        try:
            return entry(args)
        except ApiError as exc:
            print(f"{command}: {exc.detail} (HTTP {exc.status}, {exc.code})", file=sys.stderr)
            return 1
        except VdiClientError as exc:
            print(f"{command}: {exc}", file=sys.stderr)
            return 1
        except BrokenPipeError:  # `vdi desktops list | head`: the reader has what it wanted
            sys.stderr.close()
            return 0

    return guarded_entry


def run(handler: Handler) -> Callable[[argparse.Namespace], int]:
    """A command's entry: the client from --url/--token, VDI_URL/VDI_TOKEN or the config file."""

    def entry(args: argparse.Namespace) -> int:
        settings = config.load(args.url, args.token)
        with Client(settings.url, settings.token) as client:
            return handler(args, client)

    return guarded("vdi", entry)


def _connection(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--url", help="the manager's address (default: VDI_URL, or the config file's)")
    parser.add_argument("--token", help="an API token (default: VDI_TOKEN, or the config file's)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")


def _leaf(sub: Any, name: str, handler: Handler, help_text: str) -> argparse.ArgumentParser:
    p = sub.add_parser(name, help=help_text, description=help_text[0].upper() + help_text[1:] + ".")
    _connection(p)
    p.set_defaults(func=run(handler))
    return p


def _selection(p: argparse.ArgumentParser) -> None:
    p.add_argument("desktops", nargs="*", metavar="DESKTOP", help="desktop names or ids")
    p.add_argument("--search", metavar="QUERY", help="every desktop the query finds, e.g. 'Vms: Pools.name = eng'")


def add_commands(sub: Any) -> None:
    """The administrator commands, added to `vdi`'s subcommands."""
    p = sub.add_parser("login", help="log in to a manager and keep a token for the other commands",
                       description="Log in with your password and store an API token and the manager's address in "
                                   f"{config.config_path()} (mode 0600).")
    p.add_argument("--url", help="the manager's address, e.g. https://vdi.example.com")
    p.add_argument("--username", help="user, user@domain or DOMAIN\\user (asked when missing)")
    p.add_argument("--password-stdin", action="store_true", help="read the password from standard input")
    p.add_argument("--days", type=int, help="the token's lifetime (default: the manager's maximum)")
    p.set_defaults(func=guarded("vdi login", cmd_login))

    p = sub.add_parser("desktops", help="list desktops and act on them, one by one or by search",
                       description="List desktops, or start, stop, reboot, reset or migrate the ones named or found "
                                   "by --search (every page of it); reports each desktop, exits 1 if any failed.")
    actions = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    q = _leaf(actions, "list", cmd_desktops_list, "list desktops (all, or what --search finds)")
    q.add_argument("--search", metavar="QUERY", help="a search, e.g. 'Vms: status = up sortby name'")
    for action, text in (("start", "start desktops"), ("stop", "shut desktops down cleanly"),
                         ("reboot", "reboot desktops"), ("reset", "reset desktops to a fresh copy of their template"),
                         ("migrate", "live-migrate desktops to another host")):
        q = _leaf(actions, action, cmd_desktops_act, text)
        _selection(q)
        if action in ("reset", "migrate"):
            q.add_argument("--no-wait", action="store_true", help="start the jobs and return")
            q.add_argument("--timeout", type=float, help="seconds to wait for each job")
        if action == "migrate":
            q.add_argument("--host-id", help="the target host (default: the placement policy's choice)")

    p = sub.add_parser("pools", help="create, resize and edit pools", description="Create, resize and edit pools.")
    actions = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    _leaf(actions, "list", cmd_pools_list, "list pools")
    q = _leaf(actions, "create", cmd_pools_create, "create a pool")
    q.add_argument("name")
    q.add_argument("--template", required=True, help="the template's name or id")
    q.add_argument("--cluster", help="the cluster's name or id")
    q.add_argument("--size", type=int, default=0)
    q.add_argument("--prestarted", type=int, default=0)
    q.add_argument("--set", action="append", metavar="KEY=VALUE", help="any other field of the pool")
    q = _leaf(actions, "resize", cmd_pools_resize, "grow or shrink a pool (a job; waits for it)")
    q.add_argument("pool", help="the pool's name or id")
    q.add_argument("size", type=int)
    q.add_argument("--prestarted", type=int)
    q.add_argument("--no-wait", action="store_true", help="start the job and return")
    q.add_argument("--timeout", type=float, help="seconds to wait for the job")
    q = _leaf(actions, "edit", cmd_pools_edit, "change fields of a pool")
    q.add_argument("pool", help="the pool's name or id")
    q.add_argument("--set", action="append", metavar="KEY=VALUE", help="a field and its new value (JSON or text)")

    p = sub.add_parser("hosts", help="list hosts, put them into maintenance", description="Hosts.")
    actions = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    _leaf(actions, "list", cmd_hosts_list, "list hosts")
    q = _leaf(actions, "maintenance", cmd_hosts_maintenance, "put a host into maintenance (or --activate it)")
    q.add_argument("host", help="the host's name or id")
    q.add_argument("--drain", action="store_true", help="live-migrate its running desktops away (a job; waits)")
    q.add_argument("--reason", default="", help="recorded in the event")
    q.add_argument("--activate", action="store_true", help="take the host out of maintenance instead")
    q.add_argument("--no-wait", action="store_true", help="do not wait for the drain job")
    q.add_argument("--timeout", type=float, help="seconds to wait for the drain job")

    p = sub.add_parser("policies", help="run the scheduling policies", description="The scheduling policies.")
    actions = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    q = _leaf(actions, "run", cmd_policies_run, "run one round of the policies now")
    q.add_argument("--dry-run", action="store_true", help="show the decisions without carrying them out")
    q.add_argument("--cluster", help="one cluster only (name or id)")

    p = sub.add_parser("events", help="follow the event log", description="The event log.")
    actions = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    q = _leaf(actions, "tail", cmd_events_tail, "print the latest events, then new ones as they happen")
    q.add_argument("-n", "--lines", type=int, default=10, help="how many recent events first (default 10)")
    q.add_argument("--after-id", type=int, help="start after this event id instead")
    q.add_argument("--no-follow", dest="follow", action="store_false", help="print and exit")

    p = sub.add_parser("jobs", help="list jobs, wait for one", description="Jobs.")
    actions = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    q = _leaf(actions, "list", cmd_jobs_list, "list the latest jobs")
    q.add_argument("--state", choices=["pending", "running", "succeeded", "failed", "cancelled"])
    q.add_argument("--limit", type=int, default=50)
    q = _leaf(actions, "wait", cmd_jobs_wait, "wait for a job, with a progress bar; exit 1 if it fails")
    q.add_argument("job_id")
    q.add_argument("--timeout", type=float, help="give up after this many seconds (exit 1)")
