"""Benchmark the demo desktop's variants (image_manager.demo_image.VARIANTS); prints one JSON object.

For each variant: the kernel package's download size, the published files' sizes, and the boot time of a real TCG
guest on qemu:///system (`--runs` boots, one at a time): `ready_s` from libvirt's start to the serial console's
VDI-READY, `agent_s` to the guest agent's first pong. For the planner variant also each built-in operation
(docs/planner.md): the guest-side time the agent answers (`guest_ms`, CLOCK_MONOTONIC around the application) and
the host's round trip for the whole planner-op request (`round_trip_ms`), medians of `--repeat` runs; the
difference is the agent's own cost (a busybox shell, the checks, fork and exec, drawing the marks) plus the channel's:
`ping`'s round trip is that baseline (the agent polls a channel no client holds every 0.5 s).

This is what decided that the console variant stays the default (every real-guest test boots it) and the planner
variant is built only for planner desktops. Run under `flock /tmp/vdi-heavy.lock` (2-core machines).
Usage: python bench/demo_boot.py [--runs 2] [--repeat 3] [--variants console,planner]
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from core.specs import DesktopSpec  # noqa: E402
from hypervisor_node.driver import LibvirtDriver  # noqa: E402
from image_manager import qemu_img  # noqa: E402
from image_manager.demo_image import VARIANTS, default_cache_dir, ensure_demo_image  # noqa: E402
from tests.harness.guests import SerialLog, remove_owned_domains  # noqa: E402

OPERATIONS = [("word", "open", 11), ("word", "type", 12), ("word", "save", 13), ("browser", "browse", 21),
              ("archive", "compress", 31), ("video", "play", 41)]


def _deb_mib(kernel_version: str) -> float:
    debs = sorted((default_cache_dir() / "demo-image" / "debs").glob(f"linux-image-{kernel_version}_*.deb"))
    return round(debs[-1].stat().st_size / 2 ** 20, 1) if debs else 0.0


def _boot(driver: LibvirtDriver, image, workdir: Path, name: str) -> tuple[float, float, str]:
    disk = qemu_img.create(workdir / f"{name}.qcow2", backing=image.template, backing_fmt="qcow2")
    serial = SerialLog(workdir / f"{name}.log")
    spec = DesktopSpec(uuid=str(uuid.uuid4()), name=name, vcpus=1, memory_mib=192, disk_path=str(disk),
                       kernel=str(image.kernel), initrd=str(image.initrd), cmdline=image.cmdline(hostname=name),
                       serial_log=str(serial.path), sound=False, domain_type="qemu")
    driver.define(spec)
    started = time.monotonic()
    driver.start(spec.uuid)
    serial.wait_for(r"VDI-READY", timeout=600)
    ready = time.monotonic() - started
    while True:
        try:
            if driver.guest_call(spec.uuid, "ping", timeout=5) == "pong":
                break
        except Exception:  # noqa: BLE001 (the agent is not up yet: ask again)
            time.sleep(0.1)
    return round(ready, 2), round(time.monotonic() - started, 2), spec.uuid


def _operations(driver: LibvirtDriver, desktop: str, repeat: int) -> dict[str, dict[str, float]]:
    pings = []
    for _ in range(repeat):
        began = time.monotonic()
        driver.guest_call(desktop, "ping", timeout=60)
        pings.append((time.monotonic() - began) * 1000)
    figures: dict[str, dict[str, float]] = {"ping": {"round_trip_ms": round(statistics.median(pings), 1)}}
    seq = 0
    for app, op, code in OPERATIONS:
        guest, round_trip = [], []
        for _ in range(repeat):
            seq += 1
            began = time.monotonic()
            reply = driver.guest_call(desktop, f"planner-op {app} {op} {seq} {code}", timeout=300)
            round_trip.append((time.monotonic() - began) * 1000)
            status, _, _, microseconds = reply.split(maxsplit=3)
            if status != "ok":
                raise SystemExit(f"planner-op {app} {op} answered {reply!r}")
            guest.append(int(microseconds) / 1000)
        figures[f"{app}-{op}"] = {"guest_ms": round(statistics.median(guest), 1),
                                  "round_trip_ms": round(statistics.median(round_trip), 1)}
    return figures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--variants", default=",".join(VARIANTS))
    args = parser.parse_args()
    workdir = Path(f"/var/tmp/vdi-bench-boot-{os.getpid()}")
    workdir.mkdir(parents=True)
    os.chmod(workdir, 0o755)
    driver = LibvirtDriver("qemu:///system", manager_id=f"bench-boot-{uuid.uuid4().hex[:8]}", domain_types=["qemu"])
    result: dict[str, object] = {}
    try:
        for variant in args.variants.split(","):
            image = ensure_demo_image(variant=variant).publish(workdir / "templates")
            boots, desktop = [], ""
            for run in range(args.runs):
                if desktop:
                    remove_owned_domains(driver)
                boots.append(_boot(driver, image, workdir, f"bench-{variant}-{run}"))
                desktop = boots[-1][2]
            figures: dict[str, object] = {
                "kernel": image.kernel_version,
                "kernel_deb_mib": _deb_mib(image.kernel_version),
                "files_mib": round(sum(p.stat().st_size for p in (image.kernel, image.initrd, image.template))
                                   / 2 ** 20, 1),
                "ready_s": [b[0] for b in boots],
                "agent_s": [b[1] for b in boots],
                "ready_median_s": round(statistics.median(b[0] for b in boots), 2),
            }
            if VARIANTS[variant].planner:
                figures["operations"] = _operations(driver, desktop, args.repeat)
            remove_owned_domains(driver)
            result[variant] = figures
    finally:
        try:
            remove_owned_domains(driver)
        finally:
            driver.close()
            shutil.rmtree(workdir, ignore_errors=True)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
