"""Benchmark desktop provisioning through the image service; prints one JSON object.

- seconds_images: 1,000 overlay disks of a 20 GiB sparse template, the image part alone
  (image_manager.qcow2.create_overlays in one batch, storage layout paths);
- seconds_total: the full path for 1,000 desktops: database rows (Postgres, Alembic-migrated scratch
  database) + overlays through image_manager.service.create_desktop_disks + commit + a domain defined per
  desktop on a libvirt test-driver host (hypervisor_node.driver.LibvirtDriver on test:///<tmp>/node.xml);
- ms_per_desktop_p95: per desktop, its share of the batched phases plus its own domain definition;
- full_copy_mib_s: a full copy (qemu-img convert, as for full clones) of a 1 GiB template full of data;
- overlay_bytes: disk used by the 1,000 overlays together.

Usage: python bench/provision.py [--count 1000] [--copy-mib 1024] [--dir /tmp] [--pg-admin-url URL]
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

from sqlalchemy import text

from core.specs import DesktopSpec
from image_manager import chain, fileops, qcow2, qemu_img, service

GiB = 1 << 30
MiB = 1 << 20
PG_ADMIN_URL = os.environ.get("VDI_TEST_PG_ADMIN_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")


def bench_images(template: Path, root: Path, count: int) -> tuple[float, int]:
    layout = fileops.StorageLayout(root)
    paths = [layout.desktop_volume_path(f"img{i:05d}", "v1") for i in range(count)]
    start = time.perf_counter()
    qcow2.create_overlays(template, paths, job_id="benchimages")
    elapsed = time.perf_counter() - start
    used = sum(fileops.allocated_bytes(p) for p in paths)
    return elapsed, used


def bench_full_path(template: Path, root: Path, count: int, pg_admin_url: str, work: Path) -> dict[str, float]:
    from hypervisor_node.driver import LibvirtDriver
    from manager import db
    from manager.db import make_engine
    from manager.migrate import upgrade
    from manager.models import Desktop, StorageDomain, Template, TemplateVersion, Volume

    name = f"vdi_bench_{os.getpid()}_{uuid.uuid4().hex[:6]}"
    admin = make_engine(pg_admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = pg_admin_url.rsplit("/", 1)[0] + "/" + name
    node_xml = work / "node.xml"
    node_xml.write_text("<node/>\n")
    driver = LibvirtDriver(f"test://{node_xml}", manager_id="bench")
    try:
        upgrade(url)
        db.configure(url)
        with db.session_scope() as session:
            domain = StorageDomain(name="bench", path=str(root))
            session.add(domain)
            session.flush()
            tpl = Template(name="bench-20g", storage_domain_id=domain.id)
            session.add(tpl)
            session.flush()
            vol = Volume(storage_domain_id=domain.id, path=str(template), role="template",
                         virtual_size=20 * GiB, status="ok")
            session.add(vol)
            session.flush()
            version = TemplateVersion(template_id=tpl.id, number=1, volume_id=vol.id)
            session.add(version)
            session.flush()
            tpl.latest_version_id = version.id
            version_id = version.id
        driver.capabilities()  # connect once, as a running agent would have
        start = time.perf_counter()
        with db.session_scope() as session:
            desktops = [Desktop(name=f"bench-{i:05d}", template_version_id=version_id) for i in range(count)]
            session.add_all(desktops)
            session.flush()
            volumes = service.create_desktop_disks(session, desktops, job_id="benchfull")
            specs = [DesktopSpec(uuid=d.id, name=d.name, vcpus=1, memory_mib=256, disk_path=v.path)
                     for d, v in zip(desktops, volumes)]
        batched = time.perf_counter() - start
        defines = []
        for spec in specs:
            t0 = time.perf_counter()
            driver.define(spec)
            defines.append(time.perf_counter() - t0)
        total = time.perf_counter() - start
        share = batched / count
        per_desktop = sorted(share + d for d in defines)
        p95 = per_desktop[max(0, int(len(per_desktop) * 0.95) - 1)]
        return {"seconds_total": total, "seconds_rows_and_disks": batched, "seconds_defines": sum(defines),
                "ms_per_desktop_p95": p95 * 1000, "ms_per_desktop_median": statistics.median(per_desktop) * 1000,
                "domains_defined": len(driver.list_domains())}
    finally:
        driver.close()
        db.get_engine().dispose()
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def bench_full_copy(work: Path, copy_mib: int) -> float:
    source = work / "copy-src.qcow2"
    qemu_img.create(source, size=copy_mib * MiB)
    subprocess.run(["qemu-io", "-f", "qcow2", "-c", f"write -P 0x5c 0 {copy_mib}M", str(source)], check=True,
                   capture_output=True, timeout=1800)
    dest = work / "copy-dst.qcow2"
    start = time.perf_counter()
    chain.full_clone(source, dest, job_id="benchcopy")
    elapsed = time.perf_counter() - start
    source.unlink()
    dest.unlink()
    return copy_mib / elapsed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=1000)
    parser.add_argument("--copy-mib", type=int, default=1024)
    parser.add_argument("--dir", default=None, help="where to work (default: a temporary directory)")
    parser.add_argument("--pg-admin-url", default=PG_ADMIN_URL)
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="vdi-bench-provision-", dir=args.dir))
    try:
        template_root = work / "storage"
        template = fileops.StorageLayout(template_root).template_path("bench-20g", 1)
        template.parent.mkdir(parents=True)
        qemu_img.create(template, size=20 * GiB)
        seconds_images, overlay_bytes = bench_images(template, work / "images", args.count)
        full = bench_full_path(template, template_root, args.count, args.pg_admin_url, work)
        copy_rate = bench_full_copy(work, args.copy_mib)
        print(json.dumps({
            "desktops": args.count,
            "seconds_images": round(seconds_images, 3),
            "seconds_total": round(full["seconds_total"], 3),
            "ms_per_desktop_p95": round(full["ms_per_desktop_p95"], 3),
            "full_copy_mib_s": round(copy_rate, 1),
            "overlay_bytes": overlay_bytes,
            "seconds_rows_and_disks": round(full["seconds_rows_and_disks"], 3),
            "seconds_defines": round(full["seconds_defines"], 3),
            "ms_per_desktop_median": round(full["ms_per_desktop_median"], 3),
            "domains_defined": full["domains_defined"],
            "full_copies_bytes_estimate": args.count * (20 * GiB),
        }))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
