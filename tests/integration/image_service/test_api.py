"""The image routes over HTTP: upload, lineage, savings, 409 on a used version, snapshots, errors."""
from __future__ import annotations

from pathlib import Path

from image_manager import qcow2
from tests.integration.image_service.conftest import MiB, active_path, ok_job, reads_pattern

API = "/api/v1"


def _template(client, env, name="tpl") -> dict:
    response = client.post(f"{API}/templates", json={"name": name, "storage_domain_id": env.domain_id})
    assert response.status_code == 201, response.text
    return response.json()


def test_upload_lineage_savings_and_protected_delete(client, env):
    template = _template(client, env)
    source = env.base_image(writes=("write -P 0x44 0 1M",))
    response = client.post(f"{API}/templates/{template['id']}/upload", content=source.read_bytes(),
                           headers={"Content-Type": "application/octet-stream"})
    assert response.status_code == 202, response.text
    ok_job(response.json()["id"])
    versions = client.get(f"{API}/templates/{template['id']}/versions").json()
    assert [v["number"] for v in versions] == [1] and versions[0]["volume_id"]
    assert not [p for p in (env.root / "templates" / template["id"]).iterdir() if p.name.startswith(".tmp-")]

    ids = env.desktops(versions[0]["id"], ["a1", "a2", "a3"])
    for desktop_id in ids:
        from tests.integration.image_service.conftest import qemu_io

        qemu_io(active_path(desktop_id), "write -P 0x01 2M 512k")
    lineage = client.get(f"{API}/templates/{template['id']}/lineage").json()
    (version,) = lineage["versions"]
    assert version["latest"] and version["volume"]["chain_depth"] == 1
    assert sorted(d["desktop_name"] for d in version["dependents"]) == ["a1", "a2", "a3"]
    assert all(d["chain_depth"] == 2 and d["virtual_size"] == 64 * MiB and d["actual_size"] > 0
               for d in version["dependents"])
    assert version["desktops"] == ["a1", "a2", "a3"]
    savings = client.get(f"{API}/templates/{template['id']}/savings").json()
    assert savings["desktops"] == 3 and savings["shared_files"] == 1
    assert savings["full_copies_bytes"] > savings["total_bytes"] and savings["saving_ratio"] > 1
    assert client.get(f"{API}/images/savings").json()["desktops"] == 3

    response = client.delete(f"{API}/templates/{template['id']}/versions/{version['id']}")
    assert response.status_code == 409 and response.json()["error"] == "in_use"
    assert "a1, a2, a3" in response.json()["detail"]


def test_snapshot_routes_and_clear_errors(client, env):
    _t, v1 = env.template("t")
    (desktop_id,) = env.desktops(v1, ["d1"])
    disk = active_path(desktop_id)
    response = client.post(f"{API}/desktops/{desktop_id}/snapshots", json={"name": "clean"})
    assert response.status_code == 202, response.text
    snapshot_id = response.json()["snapshot_id"]
    ok_job(response.json()["job"]["id"])
    from tests.integration.image_service.conftest import qemu_io

    qemu_io(disk, "write -P 0x55 0 1M")
    listed = client.get(f"{API}/desktops/{desktop_id}/snapshots").json()
    assert [(s["name"], s["status"], s["in_active_chain"]) for s in listed] == [("clean", "ok", True)]
    response = client.post(f"{API}/desktops/{desktop_id}/snapshots/{snapshot_id}/revert")
    assert response.status_code == 202
    ok_job(response.json()["id"])
    assert reads_pattern(disk, 0, MiB, 0x11)
    assert client.post(f"{API}/desktops/{desktop_id}/snapshots", json={"name": "clean"}).json()["error"] == "duplicate"
    assert client.post(f"{API}/desktops/{desktop_id}/preview/undo").status_code == 409
    bad = client.post(f"{API}/templates/{_t}/import", json={"source_path": "/etc/passwd"})
    assert bad.status_code == 422 and "import directories" in bad.json()["detail"]
    missing = client.post(f"{API}/desktops/nope/snapshots", json={"name": "x"})
    assert missing.status_code == 404
    response = client.delete(f"{API}/desktops/{desktop_id}/snapshots/{snapshot_id}")
    assert response.status_code == 202
    ok_job(response.json()["id"])
    assert client.get(f"{API}/desktops/{desktop_id}/snapshots").json() == []
    assert Path(qcow2.read_header(disk).backing_file).name == "1.qcow2"


def test_check_export_and_reconcile_jobs(client, env, settings_env):
    template_id, v1 = env.template("t")
    (desktop_id,) = env.desktops(v1, ["d1"])
    job = client.post(f"{API}/desktops/{desktop_id}/check").json()
    assert ok_job(job["id"]).result["ok"] is True
    target = settings_env.data_dir / "export" / "backup"
    target.mkdir(parents=True)
    job = client.post(f"{API}/desktops/{desktop_id}/export", json={"target_dir": "backup"}).json()
    exported = ok_job(job["id"]).result["path"]
    assert exported == str(target / "d1.qcow2") and qcow2.read_header(exported).backing_file is None
    assert reads_pattern(exported, 0, MiB, 0x11)
    again = client.post(f"{API}/desktops/{desktop_id}/export", json={"target_dir": "backup"})
    assert again.status_code == 409
    job = client.post(f"{API}/templates/{template_id}/versions/{v1}/export",
                      json={"target_dir": "backup", "format": "raw"}).json()
    ok_job(job["id"])
    assert (target / "t-v1.raw").stat().st_size == 64 * MiB
    job = client.post(f"{API}/images/reconcile", json={"min_age_seconds": 0}).json()
    assert ok_job(job["id"]).result["removed_files"] == []
