"""Benchmark the file-level image layer; prints one JSON object.

- 1,000 desktop overlays of a 20 GiB sparse template: the Python writer (one batch, each desktop in
  its own directory as the storage layout has it, and all in one directory) vs one `qemu-img create`
  process per disk;
- a full copy (qemu-img convert, as used for full clones and flattening) of a 1 GiB template filled
  with data, in MiB/s;
- disk used by the overlays vs the same desktops as full copies.

Usage: python bench/provision_images.py [--count 1000] [--copy-mib 1024] [--dir /tmp] [--skip-qemu-img]
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
from pathlib import Path

from image_manager import chain, fileops, qcow2, qemu_img

GiB = 1 << 30
MiB = 1 << 20


def time_python_overlays(template: Path, root: Path, count: int, runs: int) -> list[float]:
    timings = []
    for run in range(runs):
        layout = fileops.StorageLayout(root / f"py{run}")
        paths = [layout.desktop_volume_path(f"d{i:05d}", "v1") for i in range(count)]
        start = time.perf_counter()
        qcow2.create_overlays(template, paths, job_id=f"bench{run}")
        timings.append(time.perf_counter() - start)
    return timings


def time_python_overlays_one_dir(template: Path, root: Path, count: int) -> float:
    """Same batch, all files in one directory: separates the file system's cost of 1,000 new
    directories from the writer's."""
    paths = [root / "flat" / f"d{i:05d}.qcow2" for i in range(count)]
    fileops.ensure_dir(root / "flat")
    start = time.perf_counter()
    qcow2.create_overlays(template, paths, job_id="benchflat")
    return time.perf_counter() - start


def time_layout_only(count: int) -> float:
    """CPU cost of computing the overlay bytes (what the writer adds on top of the file system)."""
    start = time.perf_counter()
    for i in range(count):
        qcow2.layout_overlay(f"../../templates/t20/{i}.qcow2", 20 * GiB)
    return time.perf_counter() - start


def time_qemu_img_overlays(template: Path, root: Path, count: int) -> float:
    layout = fileops.StorageLayout(root / "qemu")
    paths = [layout.desktop_volume_path(f"d{i:05d}", "v1") for i in range(count)]
    start = time.perf_counter()
    for path in paths:
        fileops.ensure_dir(path.parent)
        qemu_img.create(path, backing=template)
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=1000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--copy-mib", type=int, default=1024)
    parser.add_argument("--dir", default=None, help="where to work (default: a temporary directory)")
    parser.add_argument("--skip-qemu-img", action="store_true")
    args = parser.parse_args(argv)

    work = Path(tempfile.mkdtemp(prefix="vdi-bench-images-", dir=args.dir))
    try:
        template = fileops.StorageLayout(work).template_path("t20", 1)
        fileops.ensure_dir(template.parent)
        qemu_img.create(template, size=20 * GiB)
        py_runs = time_python_overlays(template, work, args.count, args.runs)
        sample = fileops.StorageLayout(work / "py0").desktop_volume_path("d00000", "v1")
        sample_check = qemu_img.check(sample).status
        overlay_bytes = [fileops.allocated_bytes(p) for p in (work / "py0/desktops").rglob("*.qcow2")]
        report = chain.savings_report((work / "py0/desktops").rglob("*.qcow2"))

        one_dir = time_python_overlays_one_dir(template, work, args.count)
        layout_cpu = time_layout_only(args.count)
        qemu_total = None if args.skip_qemu_img else time_qemu_img_overlays(template, work, args.count)

        # A 1 GiB template full of data (not zeros, so the copy really moves bytes).
        source = work / "templates/t1g/1.qcow2"
        source.parent.mkdir(parents=True)
        qemu_img.create(source, size=args.copy_mib * MiB)
        subprocess.run(["qemu-io", "-f", "qcow2", "-c", f"write -P 0x5a 0 {args.copy_mib}M", str(source)],
                       check=True, capture_output=True, timeout=600)
        os.sync()
        start = time.perf_counter()
        clone = chain.full_clone(source, work / "desktops/full/v1.qcow2", job_id="benchcopy")
        copy_seconds = time.perf_counter() - start
        assert qemu_img.info(clone).backing_filename is None

        best = min(py_runs)
        result = {
            "overlays": args.count,
            "template_virtual_gib": 20,
            "python_batch_seconds": [round(t, 4) for t in py_runs],
            "python_batch_best_seconds": round(best, 4),
            "python_batch_median_seconds": round(statistics.median(py_runs), 4),
            "python_per_overlay_us": round(best / args.count * 1e6, 1),
            "python_overlays_per_second": round(args.count / best),
            "python_batch_one_dir_seconds": round(one_dir, 4),
            "python_layout_cpu_seconds": round(layout_cpu, 4),
            "qemu_img_total_seconds": None if qemu_total is None else round(qemu_total, 3),
            "qemu_img_per_overlay_ms": None if qemu_total is None else round(qemu_total / args.count * 1e3, 2),
            "speedup_vs_qemu_img": None if qemu_total is None else round(qemu_total / best, 1),
            "overlay_allocated_bytes_each": max(overlay_bytes),
            "overlay_sample_check": sample_check,
            "overlays_total_allocated_bytes": report.total_bytes,
            "thick_copies_bytes": report.thick_copies_bytes,
            "full_copy_mib": args.copy_mib,
            "full_copy_seconds": round(copy_seconds, 3),
            "full_copy_mib_per_s": round(args.copy_mib / copy_seconds, 1),
            "cpu_count": os.cpu_count(),
        }
        print(json.dumps(result))
        return 0
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
