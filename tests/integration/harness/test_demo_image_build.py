"""The demo image is built from real Debian packages once per recipe and cached."""
from __future__ import annotations

import hashlib
import subprocess

import pytest

from image_manager import demo_image, qemu_img

pytestmark = [pytest.mark.libvirt, pytest.mark.slow]


def _debugfs_cat(raw, path):
    result = subprocess.run(["debugfs", "-R", f"cat {path}", str(raw)], capture_output=True, text=True, check=True)
    return result.stdout


def test_builds_once_then_reuses_the_cache(tmp_path):
    first = demo_image.ensure_demo_image(tmp_path)
    entries = sorted(p.name for p in (tmp_path / "demo-image").iterdir())
    mtimes = {p: p.stat().st_mtime_ns for p in (first.kernel, first.initrd, first.template)}

    second = demo_image.ensure_demo_image(tmp_path)

    assert second == first
    assert {p: p.stat().st_mtime_ns for p in (second.kernel, second.initrd, second.template)} == mtimes
    assert sorted(p.name for p in (tmp_path / "demo-image").iterdir()) == entries
    assert first.kernel_version.endswith("-cloud-amd64")
    assert first.apps == list(demo_image.DEFAULT_APPS)
    assert qemu_img.info(first.template).format == "qcow2"


def test_template_disk_carries_the_desktop(tmp_path):
    image = demo_image.ensure_demo_image(tmp_path)
    raw = tmp_path / "template.raw"
    qemu_img.convert(image.template, raw, out_fmt="raw")
    assert _debugfs_cat(raw, "/template-id").strip() == image.template_id
    assert _debugfs_cat(raw, "/etc/vdi/apps").splitlines() == image.apps
    assert "org.vdi.guest_agent.0" in _debugfs_cat(raw, "/usr/sbin/vdi-agent")
    assert _debugfs_cat(raw, "/sbin/init").startswith("#!/bin/busybox sh")
    stat = subprocess.run(["debugfs", "-R", "stat /sbin/init", str(raw)], capture_output=True, text=True).stdout
    assert "Mode:  0755" in stat


def test_a_different_recipe_builds_a_different_template(tmp_path):
    default = demo_image.ensure_demo_image(tmp_path)
    custom = demo_image.ensure_demo_image(tmp_path, apps=["Editor 2.0"])
    assert custom.recipe_key != default.recipe_key
    assert custom.template_id != default.template_id
    assert custom.apps == ["Editor 2.0"]
    assert hashlib.sha256(default.template.read_bytes()).hexdigest() != \
        hashlib.sha256(custom.template.read_bytes()).hexdigest()


def test_command_line_prints_the_paths(tmp_path, capsys):
    assert demo_image.main(["--cache-dir", str(tmp_path), "--publish", str(tmp_path / "shared")]) == 0
    out = capsys.readouterr().out
    assert f"template:    {tmp_path / 'shared'}" in out
    assert "kernel ver.:" in out


def test_the_planner_variant_carries_the_generic_kernel_ext4_and_the_planner(tmp_path):
    image = demo_image.ensure_demo_image(tmp_path, variant="planner")
    assert image.variant == "planner" and image.recipe_key != demo_image.recipe_key()
    assert not image.kernel_version.endswith("-cloud-amd64")
    assert "vga=0x318" in image.cmdline().split()
    # the generic kernel builds ext4 as a module: the initramfs must carry it to mount the desktop's disk
    listing = subprocess.run(["sh", "-c", f"gzip -dc {image.initrd} | cpio -t --quiet"], capture_output=True,
                             text=True, check=True).stdout.split()
    assert {"lib/modules/ext4.ko", "lib/modules/jbd2.ko", "lib/modules/crc32c_generic.ko"} <= set(listing)
    raw = tmp_path / "template.raw"
    qemu_img.convert(image.template, raw, out_fmt="raw")
    apps = subprocess.run(["debugfs", "-R", "ls /opt/planner/apps", str(raw)], capture_output=True, text=True).stdout
    assert {"word", "browser", "archive", "video"} <= set(apps.split())
    for path in ("/opt/planner/bin/vdi-planner", "/opt/planner/apps/word"):
        stat = subprocess.run(["debugfs", "-R", f"stat {path}", str(raw)], capture_output=True, text=True).stdout
        assert "Mode:  0755" in stat, path
    assert _debugfs_cat(raw, "/opt/planner/data/document.txt").count("\n") == 120
