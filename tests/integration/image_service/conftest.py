"""Fixtures for the image service: a storage domain on disk, templates imported by real jobs, desktops."""
from __future__ import annotations

import hashlib
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

if shutil.which("qemu-img") is None or shutil.which("qemu-io") is None:
    pytest.skip("qemu-img/qemu-io not installed (apt-get install qemu-utils)", allow_module_level=True)

MiB = 1 << 20
TERMINAL = ("succeeded", "failed", "cancelled")


def qemu_io(path: Path | str, *commands: str, fmt: str = "qcow2", force_share: bool = False) -> str:
    """Run qemu-io commands on an image; fail the test if any fails (read -P pattern checks included)."""
    argv = ["qemu-io", "-f", fmt, *(["-r", "-U"] if force_share else [])]
    for command in commands:
        argv += ["-c", command]
    argv.append(str(path))
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0 and "failed" not in out.lower(), f"qemu-io {commands} on {path}: {out}"
    return out


def reads_pattern(path: Path | str, offset: int, length: int, pattern: int) -> bool:
    proc = subprocess.run(["qemu-io", "-f", "qcow2", "-r", "-U", "-c", f"read -P {pattern} {offset} {length}", str(path)],
                          capture_output=True, text=True, timeout=120)
    return proc.returncode == 0 and "fail" not in (proc.stdout + proc.stderr).lower()


def sha256(path: Path | str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def wait_job(job_id: str, timeout: float = 120.0) -> "object":
    """Wait until the job (run by the in-process runner after its commit) ends; return its row."""
    from manager import db
    from manager.models import Job

    deadline = time.monotonic() + timeout
    while True:
        with db.session_scope() as session:
            job = session.get(Job, job_id)
            if job is not None and job.state.value in TERMINAL:
                session.expunge(job)
                return job
        if time.monotonic() > deadline:
            raise TimeoutError(f"job {job_id} did not finish within {timeout} s")
        time.sleep(0.05)


def ok_job(job_id: str, timeout: float = 120.0):
    job = wait_job(job_id, timeout)
    assert job.state.value == "succeeded", f"job {job.kind} {job.state.value}: {job.error}"
    return job


@dataclass
class Env:
    root: Path
    domain_id: str
    tmp: Path

    def base_image(self, name: str = "base.qcow2", size: int = 64 * MiB, writes: tuple[str, ...] = (),
                   fmt: str = "qcow2") -> Path:
        path = self.tmp / "sources" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run(["qemu-img", "create", "-q", "-f", fmt, str(path), str(size)], check=True, timeout=60)
        if writes:
            qemu_io(path, *writes, fmt=fmt)
        return path

    def template(self, name: str = "tpl", source: Path | None = None, **fields) -> tuple[str, str]:
        """A template with version 1 imported from `source` by the real import job: (template id, version id)."""
        from image_manager import service
        from manager import db
        from manager.models import Template, TemplateVersion

        source = source or self.base_image(f"{name}.qcow2", writes=("write -P 0x11 0 1M",))
        with db.session_scope() as session:
            template = Template(name=name, storage_domain_id=self.domain_id, **fields)
            session.add(template)
            session.flush()
            version = TemplateVersion(template_id=template.id, number=1, name="base")
            session.add(version)
            session.flush()
            template.latest_version_id = version.id
            job = service.import_template_image(session, template, source_path=str(source), actor="tests")
            ids = (template.id, version.id)
        ok_job(job.id)
        return ids

    def desktops(self, version_id: str, names: list[str], *, pool_id: str | None = None, **options) -> list[str]:
        from image_manager import service
        from manager import db
        from manager.models import Desktop

        with db.session_scope() as session:
            rows = [Desktop(name=n, template_version_id=version_id, pool_id=pool_id) for n in names]
            session.add_all(rows)
            session.flush()
            service.create_desktop_disks(session, rows, **options)
            return [d.id for d in rows]


@pytest.fixture
def env(settings_env, pg_engine, clean_db, tmp_path) -> Env:
    from manager import db
    from manager.models import StorageDomain

    root = tmp_path / "storage"
    root.mkdir()
    with db.session_scope() as session:
        domain = StorageDomain(name="shared", path=str(root))
        session.add(domain)
        session.flush()
        domain_id = domain.id
    return Env(root, domain_id, tmp_path)


def active_path(desktop_id: str) -> Path:
    from manager import db
    from manager.models import Desktop, Volume

    with db.session_scope() as session:
        desktop = session.get(Desktop, desktop_id)
        return Path(session.get(Volume, desktop.volume_id).path)
