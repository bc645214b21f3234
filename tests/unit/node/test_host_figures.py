"""Host figures from /proc and /sys, and screenshot conversion to PNG."""
from __future__ import annotations

import pytest

from core.errors import HypervisorError
from hypervisor_node.hoststats import HostCpuMeter, read_ksm, read_mem_usage
from hypervisor_node.screenshot import to_png
from tests.harness.screens import png_pixels


def test_host_cpu_usage_is_the_busy_share_between_two_reads(tmp_path):
    stat = tmp_path / "stat"
    stat.write_text("cpu  100 0 100 700 100 0 0 0 0 0\n")
    meter = HostCpuMeter(tmp_path)
    assert meter.usage() == 20  # since boot: 200 busy of 1000
    # +300 user, +100 idle, +100 iowait: 300 busy of 500
    stat.write_text("cpu  400 0 100 800 200 0 0 0 0 0\n")
    assert meter.usage() == 60
    assert meter.usage() == 0  # nothing happened since


def test_mem_usage_uses_available_memory(tmp_path):
    (tmp_path / "meminfo").write_text("MemTotal:  2000 kB\nMemFree:  100 kB\nMemAvailable:  500 kB\n")
    assert read_mem_usage(tmp_path) == 75


def test_ksm_figures_and_their_absence(tmp_path):
    ksm = tmp_path / "kernel" / "mm" / "ksm"
    assert read_ksm(tmp_path).running is False
    ksm.mkdir(parents=True)
    for name, value in {"run": "1", "pages_shared": "12", "pages_sharing": "345"}.items():
        (ksm / name).write_text(value + "\n")
    figures = read_ksm(tmp_path)
    assert (figures.running, figures.pages_shared, figures.pages_sharing) == (True, 12, 345)


def test_ppm_screenshots_become_png_with_the_same_pixels():
    pixels = bytes(range(2 * 3 * 3))  # 2 wide, 3 high
    ppm = b"P6\n# made by QEMU\n2 3\n255\n" + pixels
    assert png_pixels(to_png(ppm, "image/x-portable-pixmap")) == (2, 3, pixels)


def test_png_passes_through_and_other_formats_are_refused():
    png = to_png(b"P6 1 1 255\n\x01\x02\x03", "image/x-portable-pixmap")
    assert to_png(png, "image/png") is png
    with pytest.raises(HypervisorError, match="not PNG or PPM"):
        to_png(b"GIF89a...", "image/gif")
    with pytest.raises(HypervisorError, match="truncated"):
        to_png(b"P6 4 4 255\n\x00", "image/x-portable-pixmap")
