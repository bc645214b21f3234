"""The demo image's pure parts: recipe keys, input checks, cache manifests, publishing, guest scripts."""
from __future__ import annotations

import json
import shutil
import subprocess

import pytest

from core.errors import Invalid
from image_manager import demo_image
from image_manager.demo_image import DemoImage, DemoImageBuildFailed


def test_recipe_key_is_stable_and_follows_the_apps():
    assert demo_image.recipe_key() == demo_image.recipe_key(demo_image.DEFAULT_APPS)
    assert demo_image.recipe_key(["Editor 1.0"]) != demo_image.recipe_key()
    assert len(demo_image.recipe_key()) == 12


def test_recipe_key_follows_the_guest_scripts(monkeypatch):
    before = demo_image.recipe_key()
    monkeypatch.setattr(demo_image, "AGENT_SCRIPT", demo_image.AGENT_SCRIPT + "\n# changed\n")
    assert demo_image.recipe_key() != before


@pytest.mark.parametrize("apps", [[], ["ok", ""], ["two\nlines"], ["a,b"], ["  "]])
def test_bad_application_lists_are_refused_before_any_work(tmp_path, apps):
    with pytest.raises(DemoImageBuildFailed) as caught:
        demo_image.ensure_demo_image(tmp_path, apps=apps)
    assert "application" in caught.value.message
    assert not (tmp_path / "demo-image").exists() or not any((tmp_path / "demo-image").iterdir())


def _fake_entry(directory, key="k1"):
    directory.mkdir(parents=True)
    for name, content in (("vmlinuz", b"kernel"), ("initrd.img", b"initrd"), ("template.qcow2", b"disk" * 10)):
        (directory / name).write_bytes(content)
    (directory / "manifest.json").write_text(json.dumps({
        "kernel": "vmlinuz", "initrd": "initrd.img", "template": "template.qcow2", "apps": ["A 1"],
        "template_id": "demo-x", "kernel_version": "6.1.0-1-cloud-amd64", "recipe_key": key,
        "build_seconds": 1.5,
    }))
    return directory


def test_a_complete_cache_entry_is_reused(tmp_path):
    entry = _fake_entry(tmp_path / "k1")
    image = demo_image._load_manifest(entry)
    assert image == DemoImage(kernel=entry / "vmlinuz", initrd=entry / "initrd.img",
                              template=entry / "template.qcow2", apps=["A 1"], template_id="demo-x",
                              kernel_version="6.1.0-1-cloud-amd64", recipe_key="k1", build_seconds=1.5)


def test_a_cache_entry_with_a_missing_file_is_rebuilt(tmp_path):
    entry = _fake_entry(tmp_path / "k1")
    (entry / "initrd.img").unlink()
    assert demo_image._load_manifest(entry) is None
    assert demo_image._load_manifest(tmp_path / "absent") is None


def test_publish_copies_once_and_keeps_the_template_id(tmp_path):
    image = demo_image._load_manifest(_fake_entry(tmp_path / "cache" / "k1"))
    shared = tmp_path / "shared"
    published = image.publish(shared)
    assert published.template.read_bytes() == image.template.read_bytes()
    assert published.template.parent == shared.resolve()
    assert published.template_id == image.template_id and published.apps == image.apps
    assert oct(published.kernel.stat().st_mode & 0o777) == "0o644"
    first_mtime = published.template.stat().st_mtime_ns
    again = image.publish(shared)
    assert again == published
    assert again.template.stat().st_mtime_ns == first_mtime  # not copied twice
    assert sorted(p.name for p in shared.iterdir()) == sorted(
        f"vdi-demo-k1-{name}" for name in ("vmlinuz", "initrd.img", "template.qcow2"))


def test_cmdline_carries_the_console_and_a_valid_hostname(tmp_path):
    image = demo_image._load_manifest(_fake_entry(tmp_path / "k1"))
    assert image.cmdline() == "console=tty1 console=ttyS0 quiet"
    assert image.cmdline("desk-01") == "console=tty1 console=ttyS0 quiet vdi.hostname=desk-01"
    for bad in ("bad name", "-lead", "x" * 64, "semi;colon"):
        with pytest.raises(Invalid):
            image.cmdline(bad)


@pytest.mark.skipif(shutil.which("busybox") is None, reason="busybox-static is not installed")
@pytest.mark.parametrize("script", ["INITRAMFS_INIT", "DISK_INIT", "SHUTDOWN_SCRIPT", "POWER_BUTTON_SCRIPT",
                                    "AGENT_SCRIPT"])
def test_guest_scripts_parse_with_busybox_sh(tmp_path, script):
    path = tmp_path / "script.sh"
    path.write_text(getattr(demo_image, script))
    result = subprocess.run(["busybox", "sh", "-n", str(path)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_main_reports_a_build_error_without_a_traceback(tmp_path, monkeypatch, capsys):
    def refuse(*args, **kwargs):
        raise DemoImageBuildFailed(step="downloading busybox-static", reason="no network")

    monkeypatch.setattr(demo_image, "ensure_demo_image", refuse)
    assert demo_image.main(["--cache-dir", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "downloading busybox-static" in err and "Traceback" not in err


def test_main_prints_the_paths(tmp_path, monkeypatch, capsys):
    image = demo_image._load_manifest(_fake_entry(tmp_path / "k1"))
    monkeypatch.setattr(demo_image, "ensure_demo_image", lambda cache_dir=None, variant="console": image)
    assert demo_image.main(["--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["template"] == str(image.template) and printed["apps"] == ["A 1"]


def test_the_planner_variant_has_its_own_recipe_and_cmdline(tmp_path, monkeypatch):
    console, planner = demo_image.recipe_key(), demo_image.recipe_key(variant="planner")
    assert console != planner and console == demo_image.recipe_key(variant="console")
    monkeypatch.setattr(demo_image, "_planner_data", lambda: {"data/document.txt": b"another document"})
    assert demo_image.recipe_key(variant="planner") != planner  # the guest side's files are in the key
    assert demo_image.recipe_key() == console
    image = DemoImage(kernel=tmp_path / "k", initrd=tmp_path / "i", template=tmp_path / "t", variant="planner")
    assert image.cmdline("desk-01") == ("console=tty1 console=ttyS0 quiet vga=0x318 consoleblank=0 "
                                        "vdi.hostname=desk-01")


def test_an_unknown_variant_is_refused_before_any_work(tmp_path):
    with pytest.raises(DemoImageBuildFailed) as caught:
        demo_image.ensure_demo_image(tmp_path, variant="fancy")
    assert "'fancy' is not a variant: use one of console, planner" in caught.value.message
    assert not (tmp_path / "demo-image").exists()


def test_the_planner_data_is_the_same_on_every_build():
    first, second = demo_image._planner_data(), demo_image._planner_data()
    assert first == second
    assert len(first["data/archive.bin"]) == 1024 * 1024
    assert first["data/document.txt"].count(b"\n") == 120


@pytest.mark.skipif(shutil.which("gcc") is None, reason="gcc is not installed")
def test_vdi_planner_compiles_static_and_reads_the_monotonic_clock(tmp_path):
    binary = tmp_path / "vdi-planner"
    subprocess.run(["gcc", "-static", "-O2", "-Wall", "-Werror", "-o", str(binary),
                    str(demo_image.PLANNER_SOURCES / "vdi-planner.c")], check=True)
    first = int(subprocess.run([str(binary), "now"], capture_output=True, text=True, check=True).stdout)
    second = int(subprocess.run([str(binary), "now"], capture_output=True, text=True, check=True).stdout)
    assert 0 < first <= second
    refused = subprocess.run([str(binary), "run", "11", "0", "/bin/true"], capture_output=True, text=True)
    assert refused.returncode == 2 and "SEQ must be 1-999" in refused.stderr
    assert subprocess.run([str(binary), "bogus"], capture_output=True, text=True).returncode == 2


@pytest.mark.skipif(shutil.which("busybox") is None, reason="busybox-static is not installed")
@pytest.mark.parametrize("app", sorted(p.name for p in (demo_image.PLANNER_SOURCES / "apps").glob("*.sh")))
def test_planner_applications_parse_and_list_their_operations(app):
    path = demo_image.PLANNER_SOURCES / "apps" / app
    assert subprocess.run(["busybox", "sh", "-n", str(path)], capture_output=True).returncode == 0
    ops = subprocess.run(["busybox", "sh", str(path), "ops"], capture_output=True, text=True).stdout.split()
    assert ops and all(op.isalpha() and op.islower() for op in ops)
    assert subprocess.run(["busybox", "sh", str(path), "no-such-op"]).returncode == 2
