"""Fixtures for the broker's integration tests: real Postgres (tests/conftest.py), real node agent processes on
libvirt test-driver hypervisors, a real qcow2 template, users with API tokens, pools provisioned for real
(overlays written by image_manager, domains defined through NodeClient), and a real uvicorn server process."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from manager.embedded_nodes import (EmbeddedNode, NodeAgentProcess, free_port, libvirt_test_driver_uri, stop_process,
                                    wait_until_answers)

REPO = Path(__file__).resolve().parents[3]
API = "/api/v1"
# Free memory a test-driver host reports is 0; tests give hosts the figures a heartbeat would.
TEST_HOST_MEMORY_MIB = 1024 * 1024


@pytest.fixture(autouse=True)
def hosts_without_heartbeats(monkeypatch):
    """The test-driver agents here send no heartbeats (their free memory reads 0, which a heartbeat would store):
    tell the manager's liveness monitor not to expect any during a test."""
    monkeypatch.setenv("VDI_HOST_DEAD_AFTER_SECONDS", "86400")
    # Tests drive pool maintenance through the API; the background loop has a test of its own.
    monkeypatch.setenv("VDI_POOL_MAINTENANCE_SECONDS", "0")


def start_agent(name: str, directory: Path, timeout: float = 30.0) -> NodeAgentProcess:
    """`python -m hypervisor_node.agent` on a private test-driver hypervisor (test:///<dir>/<name>.xml)."""
    node_xml = directory / f"{name}.xml"
    node_xml.write_text("<node/>\n")
    # domain_types="": every type the test driver reports (the agent's default)
    node = EmbeddedNode(name=name, libvirt_uri=libvirt_test_driver_uri(node_xml), port=free_port(),
                        token=f"tok-{uuid.uuid4().hex}", domain_types="")
    return NodeAgentProcess(node, manager_url=None, log_path=directory / f"{name}.log").start(timeout)


@pytest.fixture(scope="session")
def work_dir() -> Iterator[Path]:
    """A private directory for the session. Not under pytest's numbered temp dirs: other pytest sessions
    running at the same time (as the same user) prune those, which would pull files from under our agents."""
    path = Path(tempfile.mkdtemp(prefix="vdi-broker-tests-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def node_agents(work_dir) -> Iterator[list[NodeAgentProcess]]:
    """Three node agents on test-driver hypervisors for the whole session (desktops get unique names)."""
    directory = work_dir / "nodes"
    directory.mkdir()
    agents = []
    try:
        for i in range(3):
            agents.append(start_agent(f"node{i + 1}", directory))
        yield agents
    finally:
        for agent in agents:
            agent.stop()


@pytest.fixture(scope="session")
def template_image(work_dir) -> Path:
    """A real (small, empty) qcow2 template made by qemu-img."""
    from image_manager import qemu_img

    # laid out as image_manager stores templates: <root>/templates/<template id>/<version>.qcow2
    path = work_dir / "storage" / "templates" / "base" / "1.qcow2"
    path.parent.mkdir(parents=True)
    qemu_img.create(path, size=64 * 1024 * 1024)
    return path


@pytest.fixture
def uniq() -> str:
    """A short unique prefix: test-driver hypervisors outlive a test, so desktop names must not repeat."""
    return "t" + uuid.uuid4().hex[:6]


class World:
    """Builds the objects the tests need directly in the database (one short transaction each)."""

    def __init__(self, agents: list[NodeAgentProcess], template_image: Path, prefix: str) -> None:
        self.agents, self.template_image, self.prefix = agents, template_image, prefix

    def hosts(self, count: int | None = None, memory_mib: int = TEST_HOST_MEMORY_MIB) -> list[str]:
        from core.enums import HostStatus
        from manager import db
        from manager.models import Cluster, Host, utcnow

        with db.session_scope() as s:
            cluster = Cluster(name=f"{self.prefix}-cluster")
            s.add(cluster)
            s.flush()
            ids = []
            for agent in self.agents[:count]:
                node = agent.node
                host = Host(name=f"{self.prefix}-{node.name}", cluster_id=cluster.id, agent_url=node.url,
                            agent_token=node.token, address="127.0.0.1", status=HostStatus.UP,
                            memory_mib=memory_mib, free_memory_mib=memory_mib, last_heartbeat_at=utcnow())
                s.add(host)
                s.flush()
                ids.append(host.id)
            return ids

    def template(self, os_type: str = "other_linux", name: str | None = None) -> tuple[str, str]:
        """(template id, version id) with the real qcow2 image as version 1's volume."""
        from core.enums import OsType
        from manager import db
        from manager.models import Template, TemplateVersion, Volume

        with db.session_scope() as s:
            tpl = Template(name=name or f"{self.prefix}-tpl", os_type=OsType(os_type), cpus=1, memory_mib=256)
            s.add(tpl)
            s.flush()
            vol = Volume(path=str(self.template_image), role="template", virtual_size=64 * 1024 * 1024)
            existing = s.query(Volume).filter_by(path=str(self.template_image)).one_or_none()
            if existing is not None:
                vol = existing
            else:
                s.add(vol)
                s.flush()
            version = TemplateVersion(template_id=tpl.id, number=1, name="v1", volume_id=vol.id)
            s.add(version)
            s.flush()
            tpl.latest_version_id = version.id
            return tpl.id, version.id

    def user(self, name: str, *, roles: tuple[str, ...] = (), groups: tuple[str, ...] = ()) -> tuple[str, str]:
        """(user id, bearer token)."""
        from core.enums import Role
        from manager import db
        from manager.auth import issue_token
        from manager.models import RoleAssignment, User, UserGroupMembership

        with db.session_scope() as s:
            user = User(username=name, domain="local", upn=f"{name}@local")
            s.add(user)
            s.flush()
            for role in roles:
                s.add(RoleAssignment(user_id=user.id, role=Role(role)))
            for group_id in groups:
                s.add(UserGroupMembership(user_id=user.id, group_id=group_id))
            return user.id, issue_token(s, user, name="tests")

    def group(self, name: str, parents: tuple[str, ...] = ()) -> str:
        from manager import db
        from manager.models import Group, GroupGroupMembership

        with db.session_scope() as s:
            group = Group(name=f"{self.prefix}-{name}")
            s.add(group)
            s.flush()
            for parent in parents:
                s.add(GroupGroupMembership(parent_id=parent, child_id=group.id))
            return group.id

    def entitle(self, *, pool_id: str | None = None, desktop_id: str | None = None, user_id: str | None = None,
                group_id: str | None = None) -> None:
        from manager import db
        from manager.models import Entitlement

        with db.session_scope() as s:
            s.add(Entitlement(pool_id=pool_id, desktop_id=desktop_id, user_id=user_id, group_id=group_id))

    def pool(self, size: int, *, pool_type: str = "automatic", os_type: str = "other_linux",
             protocols: str = "spice", ip_prefix: str | None = None, **pool_fields) -> str:
        """A pool with `size` desktops provisioned for real (overlays + domains on the agents)."""
        from core.enums import OsType, PoolType
        from manager import db
        from manager.models import Desktop, Pool
        from manager.provisioning.tasks import grow_pool

        template_id, version_id = self.template(os_type, name=f"{self.prefix}-tpl-{uuid.uuid4().hex[:4]}")
        with db.session_scope() as s:
            pool = Pool(name=pool_fields.pop("name", f"{self.prefix}-pool{uuid.uuid4().hex[:3]}"),
                        pool_type=PoolType(pool_type), template_id=template_id, size=size,
                        name_pattern=pool_fields.pop("name_pattern", f"{self.prefix}{uuid.uuid4().hex[:3]}-####"),
                        **pool_fields)
            s.add(pool)
            s.flush()
            pool_id = pool.id
        if size:
            result = grow_pool(None, pool_id, size)
            assert result["created"] == size, result
        with db.session_scope() as s:
            desktops = s.query(Desktop).filter_by(pool_id=pool_id).order_by(Desktop.name).all()
            for i, d in enumerate(desktops):
                d.os_type = OsType(os_type)
                d.console_protocols = protocols
                if ip_prefix:
                    d.ip = f"{ip_prefix}.{i // 250}.{i % 250 + 1}"
        return pool_id


@pytest.fixture
def world(clean_db, node_agents, template_image, uniq) -> World:
    return World(node_agents, template_image, uniq)


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def job_ended(client, job_id: str, timeout: float = 120.0) -> dict:
    """The job (GET /jobs/{id}) once it is no longer pending or running."""
    deadline = time.monotonic() + timeout
    while True:
        job = client.get(f"{API}/jobs/{job_id}").json()
        if job["state"] not in ("pending", "running"):
            return job
        assert time.monotonic() < deadline, f"job {job_id} did not end within {timeout} s: {job}"
        time.sleep(0.2)


def wait_for_jobs(timeout: float = 60.0) -> None:
    """Wait until no job is pending or running (the in-process worker runs them in threads)."""
    from sqlalchemy import func, select

    from core.enums import JobState
    from manager import db
    from manager.models import Job

    deadline = time.monotonic() + timeout
    while True:
        with db.session_scope() as s:
            busy = s.scalar(select(func.count()).select_from(Job).where(
                Job.state.in_([JobState.PENDING, JobState.RUNNING])))
        if not busy:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"{busy} job(s) still busy after {timeout} s")
        time.sleep(0.1)


@dataclass
class Server:
    url: str
    process: subprocess.Popen
    log: Path


@pytest.fixture
def api_server(settings_env, work_dir) -> Iterator[Server]:
    """The manager as a real uvicorn process on a free port, against the test database."""
    port = free_port()
    tmp_path = Path(tempfile.mkdtemp(prefix="server-", dir=work_dir))
    env = dict(os.environ, VDI_DATABASE_URL=settings_env.effective_database_url,
               VDI_DATA_DIR=str(tmp_path / "server-data"), VDI_LOG_LEVEL="WARNING",
               VDI_NODE_KEY_FILE=str(settings_env.effective_node_key_file))  # opens the tokens the tests sealed
    env.pop("VDI_REDIS_URL", None)
    log = tmp_path / "uvicorn.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "uvicorn", "manager.app:create_app", "--factory",
                                 "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning",
                                 "--no-access-log"], cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT)
    server = Server(f"http://127.0.0.1:{port}", proc, log)
    try:
        try:
            wait_until_answers(f"{server.url}{API}/health", proc, "uvicorn")
        except RuntimeError as exc:
            raise RuntimeError(f"{exc}: {log.read_text()[-3000:]}") from None
        yield server
    finally:
        stop_process(proc)
