"""Client paths never reach the filesystem unchecked (issue 22 item 1): imports come by name from the import
directories (VDI_IMPORT_DIRS), exports go only to the export directories (VDI_EXPORT_DIRS) and are not
world-readable, a template's kernel and initrd stay inside its storage domain, and a file that is not a disk
image is refused before any version exists."""
from __future__ import annotations

import os
import stat
import subprocess
from pathlib import Path

import pytest

from tests.integration.image_service.conftest import MiB, ok_job

API = "/api/v1"


@pytest.fixture
def dirs(settings_env) -> tuple[Path, Path]:
    """The default import and export directories (<data_dir>/import, <data_dir>/export)."""
    return settings_env.data_dir / "import", settings_env.data_dir / "export"


def _template(client, env, name="tpl", **fields) -> dict:
    response = client.post(f"{API}/templates", json={"name": name, "storage_domain_id": env.domain_id, **fields})
    assert response.status_code == 201, response.text
    return response.json()


def _image_versions(client, template_id: str) -> list[dict]:
    return [v for v in client.get(f"{API}/templates/{template_id}/versions").json() if v["volume_id"]]


def _jobs(client) -> int:
    return client.get(f"{API}/jobs").json()["total"]


def _qcow2(path: Path, size: int = 16 * MiB, *extra: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", *extra, str(path), str(size)], check=True, timeout=60)
    return path


def test_import_reads_only_from_the_import_directories(client, env, dirs, tmp_path):
    import_dir, _ = dirs
    template = _template(client, env)
    jobs_before = _jobs(client)
    secret = tmp_path / "root-only.img"
    secret.write_bytes(b"s" * 4096)
    secret.chmod(0o600)
    for source in ("/etc/shadow", str(secret), "../../../../etc/shadow", "../export/x.img"):
        response = client.post(f"{API}/templates/{template['id']}/import",
                               json={"source_path": source, "format": "raw"})
        assert response.status_code == 422, (source, response.text)
        assert "import director" in response.json()["detail"], response.text
    # a symlink in the import directory does not lead out of it
    import_dir.mkdir(parents=True, exist_ok=True)
    (import_dir / "link.img").symlink_to(secret)
    response = client.post(f"{API}/templates/{template['id']}/import", json={"source_path": "link.img",
                                                                          "format": "raw"})
    assert response.status_code == 422 and "import director" in response.json()["detail"], response.text
    assert _image_versions(client, template["id"]) == [] and _jobs(client) == jobs_before

    _qcow2(import_dir / "golden" / "base.qcow2")
    response = client.post(f"{API}/templates/{template['id']}/import", json={"source_path": "golden/base.qcow2"})
    assert response.status_code == 202, response.text
    ok_job(response.json()["id"])
    assert len(_image_versions(client, template["id"])) == 1


def test_default_directories_are_created_closed(client, env, dirs):
    import_dir, export_dir = dirs
    template_id, v1 = env.template("t")
    client.post(f"{API}/templates/{template_id}/import", json={"source_path": "nothing-yet.img"})
    client.post(f"{API}/templates/{template_id}/versions/{v1}/export", json={"target_dir": "nowhere"})
    assert stat.S_IMODE(import_dir.stat().st_mode) == 0o700
    assert stat.S_IMODE(export_dir.stat().st_mode) == 0o750


def test_not_an_image_is_refused_and_creates_no_version(client, env, dirs):
    import_dir, _ = dirs
    template = _template(client, env)
    import_dir.mkdir(parents=True, exist_ok=True)
    (import_dir / "empty.img").write_bytes(b"")
    (import_dir / "notes.txt").write_text("root:$6$not-a-disk:19000:0:99999:7:::\n")
    _qcow2(import_dir / "backed.qcow2", 16 * MiB, "-F", "raw", "-b", "/etc/shadow")
    (import_dir / "folder").mkdir()
    cases = {"empty.img": "empty", "notes.txt": "512-byte", "backed.qcow2": "backing file", "folder": "regular file",
             "missing.img": "does not exist"}
    for name, message in cases.items():
        for fmt in (None, "raw"):
            if name == "backed.qcow2" and fmt == "raw":
                continue
            body = {"source_path": name} | ({"format": fmt} if fmt else {})
            response = client.post(f"{API}/templates/{template['id']}/import", json=body)
            assert response.status_code in (404, 422), (name, response.text)
            assert message in response.json()["detail"], (name, response.text)
    versions = client.get(f"{API}/templates/{template['id']}/versions").json()
    assert [(v["number"], v["volume_id"]) for v in versions] == [(1, None)]
    assert client.get(f"{API}/templates/{template['id']}").json()["status"] != "locked"


def test_export_writes_only_to_the_export_directories_and_not_world_readable(client, env, dirs, tmp_path):
    _, export_dir = dirs
    template_id, v1 = env.template("t")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    url = f"{API}/templates/{template_id}/versions/{v1}/export"
    for target in (str(elsewhere), "/tmp", "..", "../storage"):
        response = client.post(url, json={"target_dir": target})
        assert response.status_code == 422 and "export director" in response.json()["detail"], (target, response.text)
    assert list(elsewhere.iterdir()) == []

    job = client.post(url, json={"format": "raw"}).json()
    exported = Path(ok_job(job["id"]).result["path"])
    assert exported == export_dir / "t-v1.raw" and exported.stat().st_size == 64 * MiB
    assert stat.S_IMODE(exported.stat().st_mode) & 0o007 == 0, oct(exported.stat().st_mode)
    (export_dir / "weekly").mkdir()
    job = client.post(url, json={"target_dir": "weekly"}).json()
    exported = Path(ok_job(job["id"]).result["path"])
    assert exported == export_dir / "weekly" / "t-v1.qcow2"
    assert stat.S_IMODE(exported.stat().st_mode) & 0o007 == 0


def test_boot_kernel_and_initrd_stay_inside_the_storage_domain(client, env, tmp_path):
    boot = env.root / "boot"
    boot.mkdir()
    (boot / "vmlinuz").write_bytes(b"k" * 1024)
    (boot / "initrd.img").write_bytes(b"i" * 1024)
    outside = tmp_path / "vmlinuz"
    outside.write_bytes(b"k" * 1024)
    os.symlink(outside, boot / "escape")
    for fields in ({"boot_kernel": "/etc/shadow"}, {"boot_initrd": "/etc/shadow"}, {"boot_kernel": str(outside)},
                   {"boot_kernel": "../vmlinuz"}, {"boot_kernel": "boot/escape"}):
        response = client.post(f"{API}/templates", json={"name": "t", "storage_domain_id": env.domain_id, **fields})
        assert response.status_code == 422 and "storage domain" in response.json()["detail"], (fields, response.text)
    template = _template(client, env, boot_kernel=str(boot / "vmlinuz"), boot_initrd="boot/initrd.img")
    assert (template["boot_kernel"], template["boot_initrd"]) == (str(boot / "vmlinuz"), str(boot / "initrd.img"))
    for fields in ({"boot_kernel": "/etc/shadow"}, {"boot_initrd": "/etc/passwd"}, {"boot_kernel": "boot/escape"},
                   {"boot_kernel": "boot/missing"}):
        response = client.patch(f"{API}/templates/{template['id']}", json=fields)
        assert response.status_code == 422 and "storage domain" in response.json()["detail"], (fields, response.text)
    again = client.get(f"{API}/templates/{template['id']}").json()
    assert again["boot_kernel"] == str(boot / "vmlinuz")
    response = client.patch(f"{API}/templates/{template['id']}", json={"boot_kernel": "", "boot_initrd": ""})
    assert response.status_code == 200 and response.json()["boot_kernel"] == ""
