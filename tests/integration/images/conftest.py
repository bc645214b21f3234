"""Helpers for image tests against the real qemu-img / qemu-io binaries."""
from __future__ import annotations

import hashlib
import shutil
import subprocess
from pathlib import Path

import pytest

if shutil.which("qemu-img") is None or shutil.which("qemu-io") is None:
    pytest.skip("qemu-img/qemu-io not installed (apt-get install qemu-utils)", allow_module_level=True)

MiB = 1024 * 1024
GiB = 1024 * MiB


def qemu_io(path: Path | str, *commands: str, fmt: str = "qcow2") -> str:
    """Run qemu-io commands on an image; fail the test if any command fails (incl. pattern checks)."""
    argv = ["qemu-io", "-f", fmt]
    for command in commands:
        argv += ["-c", command]
    argv.append(str(path))
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0 and "failed" not in out.lower(), f"qemu-io {commands} on {path}: {out}"
    return out


def content_digest(path: Path | str, tmp_dir: Path) -> str:
    """sha256 of everything the guest would read through `path` and its backing chain."""
    raw = tmp_dir / f"digest-{Path(path).name}.raw"
    proc = subprocess.run(["qemu-img", "convert", "-O", "raw", str(path), str(raw)], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, f"qemu-img convert of {path} failed: {proc.stderr}"
    digest = hashlib.sha256()
    with open(raw, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    raw.unlink()
    return digest.hexdigest()


def qemu_img_json(*args: str) -> object:
    import json

    proc = subprocess.run(["qemu-img", *args, "--output=json"], capture_output=True, text=True, timeout=120)
    assert proc.returncode in (0, 2, 3), proc.stderr
    return json.loads(proc.stdout)


@pytest.fixture
def make_base(tmp_path: Path):
    """Create a standalone qcow2 base image with qemu-img, optionally filled with qemu-io writes."""

    def make(name: str = "base.qcow2", size: int = 64 * MiB, writes: tuple[str, ...] = (),
             cluster_size: int | None = None) -> Path:
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        argv = ["qemu-img", "create", "-q", "-f", "qcow2"]
        if cluster_size:
            argv += ["-o", f"cluster_size={cluster_size}"]
        subprocess.run([*argv, str(path), str(size)], check=True, timeout=60)
        if writes:
            qemu_io(path, *writes)
        return path

    return make
