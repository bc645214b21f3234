"""Templates: import (path, raw, upload), versions from a desktop, the latest pointer, protected deletion."""
from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from sqlalchemy import select

from core.errors import InUse, Invalid
from image_manager import qcow2, service
from image_manager.errors import ImageInvalid, ImageNotFound
from manager import db
from manager.models import Event, Job, Template, TemplateVersion, Volume
from tests.integration.image_service.conftest import MiB, ok_job, qemu_io, reads_pattern, sha256, wait_job



def _content(path: Path, tmp: Path) -> str:
    raw = tmp / f"{path.name}.raw"
    subprocess.run(["qemu-img", "convert", "-U", "-O", "raw", str(path), str(raw)], check=True, timeout=120)
    digest = sha256(raw)
    raw.unlink()
    return digest


def test_import_converts_into_the_layout_as_a_job_and_sets_latest(env):
    source = env.base_image(writes=("write -P 0x5a 0 2M", "write -P 0x21 32M 1M"))
    template_id, version_id = env.template("debian", source=source)
    with db.session_scope() as session:
        template = session.get(Template, template_id)
        version = session.get(TemplateVersion, version_id)
        volume = session.get(Volume, version.volume_id)
        job = session.scalar(select(Job).where(Job.kind == "image.import"))
        assert template.latest_version_id == version_id and template.status == "ok"
        assert volume.path == str(env.root / "templates" / template_id / "1.qcow2")
        assert volume.status == "ok" and volume.role == "template" and volume.virtual_size == 64 * MiB
        assert job.progress == 100.0 and job.target_id == template_id
        codes = set(session.scalars(select(Event.code)))
    assert {"template.import_started", "template.version_ready"} <= codes
    assert qcow2.read_header(volume.path).backing_file is None
    assert _content(Path(volume.path), env.tmp) == _content(source, env.tmp)
    assert not list(Path(volume.path).parent.glob(".tmp-*"))


def test_raw_import_and_a_second_import_makes_version_two(env):
    template_id, _v1 = env.template("t")
    raw = env.base_image("disk.raw", size=8 * MiB, writes=("write -P 0x33 0 64k",), fmt="raw")
    with db.session_scope() as session:
        job = service.import_template_image(session, session.get(Template, template_id), source_path=str(raw),
                                            version_name="patched")
    ok_job(job.id)
    with db.session_scope() as session:
        template = session.get(Template, template_id)
        latest = session.get(TemplateVersion, template.latest_version_id)
        assert (latest.number, latest.name) == (2, "patched")
        path = session.get(Volume, latest.volume_id).path
    assert qcow2.is_qcow2(path) and reads_pattern(path, 0, 65536, 0x33)


def test_bad_sources_get_clear_errors(env):
    template_id, _ = env.template("t")
    vmdk = env.tmp / "disk.vmdk"
    subprocess.run(["qemu-img", "create", "-q", "-f", "vmdk", str(vmdk), "1M"], check=True)
    with db.session_scope() as session:
        template = session.get(Template, template_id)
        with pytest.raises(Invalid, match="absolute path"):
            service.import_template_image(session, template, source_path="relative.qcow2")
        with pytest.raises(ImageNotFound):
            service.import_template_image(session, template, source_path=str(env.tmp / "missing.qcow2"))
        with pytest.raises(Invalid, match="not a regular file"):
            service.import_template_image(session, template, source_path=str(env.tmp))
        with pytest.raises(ImageInvalid, match="vmdk"):
            service.import_template_image(session, template, source_path=str(vmdk))
        session.rollback()


def test_failed_import_leaves_no_rows_or_files(env):
    template_id, _ = env.template("t")
    # A source that vanishes between the request and the job: the job fails and undoes its rows.
    doomed = env.base_image("doomed.qcow2", size=MiB)
    with db.session_scope() as session:
        job = service.import_template_image(session, session.get(Template, template_id), source_path=str(doomed))
        doomed.unlink()
        params = dict(job.params)
    failed = wait_job(job.id)
    assert failed.state.value == "failed" and "does not exist" in failed.error
    with db.session_scope() as session:
        assert session.get(Volume, params["volume_id"]) is None
        assert session.get(TemplateVersion, params["version_id"]) is None
        assert session.get(Template, template_id).status == "ok"
    leftovers = [p for p in (env.root / "templates" / template_id).iterdir() if p.name.startswith(".tmp-")]
    assert leftovers == []


def test_version_from_desktop_flattens_its_disk(env):
    template_id, v1 = env.template("t")
    (desktop_id,) = env.desktops(v1, ["d1"])
    from tests.integration.image_service.conftest import active_path

    disk = active_path(desktop_id)
    qemu_io(disk, "write -P 0x77 4M 1M")
    with db.session_scope() as session:
        job = service.create_version_from_desktop(session, service.get_desktop(session, desktop_id), name="with app")
    ok_job(job.id)
    with db.session_scope() as session:
        template = session.get(Template, template_id)
        v2 = session.get(TemplateVersion, template.latest_version_id)
        path = session.get(Volume, v2.volume_id).path
        assert (v2.number, v2.created_from_desktop_id) == (2, desktop_id)
        assert service.get_desktop(session, desktop_id).task_state is None
    assert qcow2.read_header(path).backing_file is None
    assert reads_pattern(path, 4 * MiB, MiB, 0x77) and reads_pattern(path, 0, MiB, 0x11)


def test_a_version_with_dependents_cannot_be_deleted(env):
    template_id, v1 = env.template("t")
    env.desktops(v1, ["d1", "d2"])
    with db.session_scope() as session:
        template = session.get(Template, template_id)
        with pytest.raises(InUse) as err:
            service.delete_template_version(session, template, session.get(TemplateVersion, v1))
        session.rollback()
    assert "d1, d2" in err.value.message and "volumes" in err.value.message


def test_deleting_an_unused_version_removes_its_file_and_moves_latest(env):
    template_id, v1 = env.template("t")
    with db.session_scope() as session:
        job = service.import_template_image(session, session.get(Template, template_id),
                                            source_path=str(env.base_image("b2.qcow2")))
    ok_job(job.id)
    with db.session_scope() as session:
        template = session.get(Template, template_id)
        v2 = session.get(TemplateVersion, template.latest_version_id)
        path = Path(session.get(Volume, v2.volume_id).path)
        service.delete_template_version(session, template, v2)
    assert not path.exists()
    with db.session_scope() as session:
        assert session.get(Template, template_id).latest_version_id == v1
