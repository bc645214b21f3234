"""vdi_client and the `vdi` administrator commands against a running manager (issue 19 items 3 and 4).

One `vdi serve` for the module: the embedded default (SQLite, in-process jobs) seeded by `vdi demo --real-guests
no`, whose desktops run on libvirt test-driver hosts behind real node agents: carol-finance, and eng-001..003 of
pool eng. The commands run as subprocesses, configured by VDI_URL and VDI_TOKEN or by `vdi login`'s file.
"""
from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from manager.embedded_nodes import free_port, wait_until_answers
from tests.e2e.server import stop_manager
from vdi_client import ApiError, Client, JobFailed, ServerUnreachable
from vdi_client import models as m

pytestmark = [pytest.mark.slow]  # libvirt's test driver only: the light shard (tests/shards.py)
REPO = Path(__file__).resolve().parents[3]
ADMIN_PASSWORD = "cli-admin-password"
EXAMPLES = REPO / "docs" / "examples"


@pytest.fixture(scope="module")
def manager(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("vdi-cli")
    env = {k: v for k, v in os.environ.items() if not k.startswith("VDI_")}
    port = free_port()
    env.update(VDI_DATA_DIR=str(workdir / "data"), VDI_ADMIN_PASSWORD=ADMIN_PASSWORD, VDI_PORT=str(port),
               XDG_CONFIG_HOME=str(workdir / "config"))
    seeded = subprocess.run([sys.executable, "-m", "manager.cli", "demo", "--real-guests", "no"], env=env,
                            capture_output=True, text=True, timeout=600, stdin=subprocess.DEVNULL)
    assert seeded.returncode == 0, seeded.stderr[-3000:]
    log = open(workdir / "serve.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "manager.cli", "serve"], env=env, stdout=log,
                            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_answers(f"{url}/api/v1/health", proc, "vdi serve", timeout=120)
        with Client.login(url, "admin", ADMIN_PASSWORD) as admin:
            token = admin.auth.create_token(name="cli tests", password=ADMIN_PASSWORD)["token"]
        yield {"url": url, "token": token, "env": env, "workdir": workdir}
    finally:
        stop_manager(proc)
        log.close()


@pytest.fixture
def vdi(manager):
    with Client(manager["url"], manager["token"]) as client:
        yield client


def run(manager, *args: str, stdin: str | None = None, token: bool = True) -> subprocess.CompletedProcess:
    env = dict(manager["env"], VDI_URL=manager["url"])
    if token:
        env["VDI_TOKEN"] = manager["token"]
    return subprocess.run([sys.executable, "-m", "manager.cli", *args], env=env, capture_output=True, text=True,
                          timeout=300, input=stdin)


def desktop(vdi: Client, name: str) -> m.Desktop:
    (found,) = vdi.search.iter(f"Vms: name = {name}")
    return found


# ---- the CLI --------------------------------------------------------------------------------------------------
def test_bulk_reboot_by_search_query(manager, vdi):
    started = run(manager, "desktops", "start", "--search", "Vms: pool = eng", "--json")
    assert started.returncode == 0, started.stderr
    assert sorted(r["desktop"] for r in json.loads(started.stdout)) == ["eng-001", "eng-002", "eng-003"]
    newest = vdi.events.list(per_page=1).items[0].id

    rebooted = run(manager, "desktops", "reboot", "--search", "Vms: pool = eng and status = up", "--json")
    assert rebooted.returncode == 0, rebooted.stderr
    rows = json.loads(rebooted.stdout)
    assert sorted(r["desktop"] for r in rows) == ["eng-001", "eng-002", "eng-003"]
    assert all(r["ok"] for r in rows)
    # the server did it: one desktop.rebooted event per desktop
    events = [e for e in vdi.events.list(code="desktop.rebooted", per_page=100).items if e.id > newest]
    assert sorted(e.desktop_id for e in events) == sorted(r["id"] for r in rows)


def test_a_bad_query_exits_non_zero_with_the_servers_message(manager):
    result = run(manager, "desktops", "reboot", "--search", "Vms: status = running")
    assert result.returncode == 1
    assert "'running' is not a valid status" in result.stderr and "INVALID_CONDITION_VALUE" in result.stderr
    assert "Traceback" not in result.stderr and result.stdout == ""


def test_a_bulk_action_reports_each_desktop_and_fails_if_one_did(manager, vdi):
    if desktop(vdi, "carol-finance").power_state != "down":
        vdi.desktops.poweroff(desktop(vdi, "carol-finance").id)
    if desktop(vdi, "eng-001").power_state != "up":
        vdi.desktops.start(desktop(vdi, "eng-001").id)
    result = run(manager, "desktops", "reboot", "carol-finance", "eng-001", "--json")
    assert result.returncode == 1
    rows = {r["desktop"]: r for r in json.loads(result.stdout)}
    assert rows["eng-001"]["ok"] is True
    assert rows["carol-finance"]["ok"] is False
    with pytest.raises(ApiError) as refused:  # what the server says to the same request: the row carries it
        vdi.desktops.reboot(rows["carol-finance"]["id"])
    assert 400 <= refused.value.status < 500
    assert (rows["carol-finance"]["result"], rows["carol-finance"]["status"], rows["carol-finance"]["error"]) == (
        refused.value.detail, refused.value.status, refused.value.code)
    assert "1 of 2 failed" in result.stderr
    table = run(manager, "desktops", "reboot", "carol-finance")  # the table says the same
    assert table.returncode == 1 and "carol-finance" in table.stdout and refused.value.detail in table.stdout


def test_a_query_of_other_objects_is_refused(manager):
    result = run(manager, "desktops", "stop", "--search", "Hosts:")
    assert result.returncode == 1 and "finds hosts, not desktops" in result.stderr


def test_list_as_table_and_json(manager):
    table = run(manager, "desktops", "list")
    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    assert lines[0].split()[:3] == ["NAME", "POWER_STATE", "TASK_STATE"]
    assert [line.split()[0] for line in lines[1:]] == ["carol-finance", "eng-001", "eng-002", "eng-003"]
    listed = json.loads(run(manager, "desktops", "list", "--json", "--search", "Vms: pool = eng").stdout)
    assert sorted(d["name"] for d in listed) == ["eng-001", "eng-002", "eng-003"]


def test_migrate_waits_for_the_jobs_and_reports_their_failure(manager, vdi):
    """The test driver cannot migrate: the job fails, and the command says why and exits 1."""
    if desktop(vdi, "eng-002").power_state != "up":
        vdi.desktops.start(desktop(vdi, "eng-002").id)
    result = run(manager, "desktops", "migrate", "eng-002", "--json")
    assert result.returncode == 1
    (row,) = json.loads(result.stdout)
    assert row["ok"] is False and "failed" in row["result"] and row["job_id"]
    waited = run(manager, "jobs", "wait", row["job_id"])
    assert waited.returncode == 1 and "failed" in waited.stderr


def test_pools_create_edit_resize(manager, vdi):
    created = run(manager, "pools", "create", "cli-pool", "--template", "debian-desktop", "--size", "0", "--json")
    assert created.returncode == 0, created.stderr
    (pool,) = json.loads(created.stdout)
    edited = run(manager, "pools", "edit", "cli-pool", "--set", "description=made by the CLI", "--json")
    assert edited.returncode == 0, edited.stderr
    assert vdi.pools.get(pool["id"]).description == "made by the CLI"
    resized = run(manager, "pools", "resize", "cli-pool", "1", "--json")
    assert resized.returncode == 0, resized.stderr
    (job,) = json.loads(resized.stdout)
    assert job["state"] == "succeeded"
    assert vdi.search.page("Vms: pool = cli-pool").total == 1
    again = run(manager, "pools", "create", "cli-pool", "--template", "debian-desktop")
    assert again.returncode == 1 and "cli-pool" in again.stderr and "409" in again.stderr


def test_host_maintenance_and_activate(manager, vdi):
    running = desktop(vdi, "eng-001")
    if running.power_state != "up":
        running = vdi.desktops.start(running.id)
    busy_host = vdi.hosts.get(running.host_id)
    busy = run(manager, "hosts", "maintenance", busy_host.name)  # it runs a desktop: the server's reason
    assert busy.returncode == 1 and "shut them down first" in busy.stderr
    other = next(h for h in vdi.hosts.iter() if h.id != busy_host.id)
    for d in vdi.search.iter(f"Vms: Hosts.name = {other.name} and status != down"):
        vdi.desktops.poweroff(d.id)
    down = run(manager, "hosts", "maintenance", other.name, "--reason", "cli test", "--json")
    assert down.returncode == 0, down.stderr
    assert json.loads(down.stdout)[0]["status"] == "maintenance"
    up = run(manager, "hosts", "maintenance", other.name, "--activate", "--json")
    assert up.returncode == 0, up.stderr
    assert vdi.hosts.get(other.id).status != "maintenance"


def test_policies_dry_run(manager):
    result = run(manager, "policies", "run", "--dry-run", "--json")
    assert result.returncode == 0, result.stderr
    answer = json.loads(result.stdout)
    assert answer["dry_run"] is True and answer["jobs"] == [] and isinstance(answer["decisions"], list)


def test_events_tail_follows_the_stream(manager, vdi):
    env = dict(manager["env"], VDI_URL=manager["url"], VDI_TOKEN=manager["token"])
    tail = subprocess.Popen([sys.executable, "-m", "manager.cli", "events", "tail", "-n", "0", "--json"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    seen: list[dict] = []

    def read() -> None:
        for line in tail.stdout:
            seen.append(json.loads(line))
            if seen[-1]["code"] == "tag.created":
                return

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        # the stream is open once the command has read the newest event; an event made now must reach it
        for attempt in range(60):
            vdi.tags.create(name=f"tail-{attempt}")
            reader.join(timeout=1.0)
            if not reader.is_alive():
                break
        assert seen and seen[-1]["code"] == "tag.created", tail.stderr.read() if tail.poll() is not None else seen
    finally:
        tail.terminate()
        tail.wait(timeout=30)


def test_login_writes_a_private_config_the_other_commands_use(manager):
    logged_in = run(manager, "login", "--url", manager["url"], "--username", "admin", "--password-stdin",
                    stdin=ADMIN_PASSWORD + "\n", token=False)
    assert logged_in.returncode == 0, logged_in.stderr
    path = Path(manager["env"]["XDG_CONFIG_HOME"]) / "vdi" / "config.toml"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    env = {k: v for k, v in manager["env"].items()}  # neither VDI_URL nor VDI_TOKEN: the file only
    hosts = subprocess.run([sys.executable, "-m", "manager.cli", "hosts", "list", "--json"], env=env,
                           capture_output=True, text=True, timeout=120)
    assert hosts.returncode == 0, hosts.stderr
    assert sorted(h["name"] for h in json.loads(hosts.stdout)) == ["vs-a", "vs-b"]
    wrong = run(manager, "login", "--url", manager["url"], "--username", "admin", "--password-stdin",
                stdin="not-the-password\n", token=False)
    assert wrong.returncode == 1 and "HTTP 401" in wrong.stderr


# ---- the client -----------------------------------------------------------------------------------------------
def test_errors_carry_the_servers_code_status_and_message(manager, vdi):
    with pytest.raises(ApiError) as missing:
        vdi.desktops.get("00000000-0000-0000-0000-000000000000")
    assert (missing.value.status, missing.value.code) == (404, "not_found")
    assert "00000000-0000-0000-0000-000000000000" in missing.value.detail
    with pytest.raises(ApiError) as bad:
        vdi.search.page("Vms: status = running")
    assert (bad.value.status, bad.value.code) == (400, "INVALID_CONDITION_VALUE")
    assert bad.value.body["position"] == 14
    with pytest.raises(ApiError) as anonymous:
        Client(manager["url"]).desktops.list()
    assert (anonymous.value.status, anonymous.value.code) == (401, "not_authenticated")
    with pytest.raises(ApiError) as invalid:
        vdi.pools.resize(vdi.pools.list().items[0].id, -1)
    assert invalid.value.status == 422 and "size" in invalid.value.detail
    with pytest.raises(ServerUnreachable):
        Client(f"http://127.0.0.1:{free_port()}", "x", timeout=5).system.health()


def test_search_pages_as_an_iterator(vdi):
    one_page = vdi.search.page("Vms: sortby name", page_size=100)
    names = [d["name"] for d in one_page.items]
    assert len(names) >= 4
    paged = list(vdi.search.iter("Vms: sortby name", page_size=1))
    assert [d.name for d in paged] == names  # every page, in order, nothing twice
    assert all(isinstance(d, m.Desktop) for d in paged)
    assert [d.name for d in vdi.search.iter("Vms: sortby name asc page 2", page_size=1)] == [names[1]]
    assert all(isinstance(h, m.Host) for h in vdi.search.iter("Hosts:"))
    assert sorted(d.name for d in vdi.desktops.iter(per_page=1)) == sorted(names)


def test_waiting_for_jobs_with_progress(vdi):
    pool = next(p for p in vdi.pools.iter() if p.name == "eng")
    seen: list[m.Job] = []
    job = vdi.jobs.wait(vdi.pools.resize(pool.id, pool.size), progress=seen.append, interval=0.1)
    assert job.state == "succeeded" and job.progress == 100
    assert seen and seen[-1].id == job.id and seen[-1].finished
    assert [s for s in seen[:-1] if s.finished] == []  # called with every state read, the last one finished
    target = desktop(vdi, "eng-003")
    if target.power_state != "up":
        vdi.desktops.start(target.id)
    with pytest.raises(JobFailed) as failed:
        vdi.jobs.wait(vdi.desktops.migrate(target.id), interval=0.1)
    assert failed.value.job.state == "failed" and "not supported" in failed.value.job.error
    unchecked = vdi.jobs.wait(failed.value.job.id, check=False)
    assert unchecked.state == "failed"


def test_event_stream_resumes_after_an_id(vdi):
    recent = vdi.events.list(per_page=3).items  # newest first
    streamed = vdi.events.stream(after_id=recent[-1].id)
    assert [next(streamed).id, next(streamed).id] == [recent[-2].id, recent[-3].id]
    streamed.close()


# ---- the examples in docs/sdk-cli.md ---------------------------------------------------------------------------
@pytest.mark.parametrize("script", sorted(p.name for p in EXAMPLES.glob("*.py")))
def test_example_answers_help(script):
    result = subprocess.run([sys.executable, str(EXAMPLES / script), "--help"], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage:")


def test_power_saving_example(manager, vdi):
    env = dict(manager["env"], VDI_URL=manager["url"], VDI_TOKEN=manager["token"])
    target = desktop(vdi, "eng-001")
    if target.power_state != "up":
        vdi.desktops.start(target.id)
    dry = subprocess.run([sys.executable, str(EXAMPLES / "nightly_power_saving.py"), "--dry-run"], env=env,
                         capture_output=True, text=True, timeout=120)
    assert dry.returncode == 0, dry.stderr
    assert "would shut down eng-001" in dry.stdout
    assert desktop(vdi, "eng-001").power_state == "up"
    real = subprocess.run([sys.executable, str(EXAMPLES / "nightly_power_saving.py"), "--exclude-pool", "nobody"],
                          env=env, capture_output=True, text=True, timeout=300)
    assert real.returncode == 0, real.stderr
    assert "shut down eng-001" in real.stdout
    assert desktop(vdi, "eng-001").power_state == "down"


def test_reimage_pool_example(manager, vdi):
    env = dict(manager["env"], VDI_URL=manager["url"], VDI_TOKEN=manager["token"])
    result = subprocess.run([sys.executable, str(EXAMPLES / "reimage_pool.py"), "eng", "--power-off", "--batch",
                             "2"], env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    names = sorted(d.name for d in vdi.search.iter("Vms: pool = eng"))
    assert sorted(line.split(":")[0] for line in result.stdout.splitlines()[1:]) == names
    assert all(line.endswith(": re-imaged") for line in result.stdout.splitlines()[1:])
    missing = subprocess.run([sys.executable, str(EXAMPLES / "reimage_pool.py"), "no-such-pool"], env=env,
                             capture_output=True, text=True, timeout=60)
    assert missing.returncode == 1 and "no pool is named 'no-such-pool'" in missing.stderr
