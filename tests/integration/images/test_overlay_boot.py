"""QEMU boots a real machine from a Python-written overlay and its guest writes into it.

The base image holds a hand-assembled 16-bit boot sector. SeaBIOS reads it through the overlay, runs
it, and the code writes its own sector to sector 2 of the disk with BIOS int 13h, then prints a line on
COM1. Afterwards the written sector must be in the overlay and the base must be unchanged.
"""
from __future__ import annotations

import shutil
import subprocess
import time

import pytest

from image_manager import qcow2, qemu_img

from .conftest import MiB, qemu_io

pytestmark = pytest.mark.skipif(shutil.which("qemu-system-x86_64") is None,
                                reason="qemu-system-x86_64 not installed (apt-get install qemu-system-x86)")

OK_MESSAGE = b"BOOT-OK wrote sector 2\r\n"
FAIL_MESSAGE = b"BOOT-FAIL\r\n"


def boot_sector() -> bytes:
    code = bytes.fromhex(
        "fa"            # cli
        "31c0"          # xor ax, ax
        "8ed8"          # mov ds, ax
        "8ec0"          # mov es, ax
        "8ed0"          # mov ss, ax
        "bc007c"        # mov sp, 0x7c00
        "fb"            # sti
        "bb007c"        # mov bx, 0x7c00      ; buffer: this very sector
        "b80103"        # mov ax, 0x0301      ; int 13h write, 1 sector
        "b90200"        # mov cx, 0x0002      ; cylinder 0, sector 2
        "b600"          # mov dh, 0           ; head 0, dl = boot drive
        "cd13"          # int 0x13
    )
    ok_at, fail_at = 0x31, 0x31 + len(OK_MESSAGE) + 1
    code += b"\xbe" + (0x7C00 + ok_at).to_bytes(2, "little")  # mov si, ok_message
    code += bytes.fromhex("7303")  # jnc print
    code += b"\xbe" + (0x7C00 + fail_at).to_bytes(2, "little")  # mov si, fail_message
    code += bytes.fromhex(
        "baf803"        # print: mov dx, 0x3f8 (COM1)
        "ac"            # next: lodsb
        "84c0"          # test al, al
        "7403"          # jz halt
        "ee"            # out dx, al
        "ebf8"          # jmp next
        "fa"            # halt: cli
        "f4"            # hlt
        "ebfc"          # jmp halt
    )
    assert len(code) == ok_at
    sector = code + OK_MESSAGE + b"\0" + FAIL_MESSAGE + b"\0"
    return sector.ljust(510, b"\0") + b"\x55\xaa"


def test_qemu_boots_from_the_overlay_and_writes_into_it(tmp_path):
    sector = boot_sector()
    raw = tmp_path / "base.raw"
    raw.write_bytes(sector.ljust(1 * MiB, b"\0"))
    base = qemu_img.convert(raw, tmp_path / "base.qcow2", src_fmt="raw")
    base_bytes = base.read_bytes()
    overlay = qcow2.create_overlay(tmp_path / "desk.qcow2", base)
    serial = tmp_path / "serial.log"

    vm = subprocess.Popen(
        ["qemu-system-x86_64", "-machine", "pc,accel=tcg", "-m", "32", "-nodefaults", "-display", "none",
         "-serial", f"file:{serial}", "-monitor", "stdio", "-no-reboot",
         "-drive", f"file={overlay},format=qcow2,if=ide,index=0", "-boot", "c"],
        stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 90
        while b"BOOT-" not in (serial.read_bytes() if serial.exists() else b""):
            assert vm.poll() is None, f"QEMU exited early: {vm.stderr.read().decode() if vm.stderr else ''}"
            assert time.monotonic() < deadline, "the guest never printed its boot line"
            time.sleep(0.1)
        # 'quit' closes the block devices properly, flushing qcow2 metadata caches.
        vm.communicate(b"quit\n", timeout=30)
    finally:
        if vm.poll() is None:
            vm.kill()
            vm.wait()

    assert OK_MESSAGE in serial.read_bytes()
    assert not qcow2.is_empty(overlay)
    assert qemu_img.check(overlay).ok
    assert base.read_bytes() == base_bytes
    dump = tmp_path / "dump.raw"
    qemu_img.convert(overlay, dump, out_fmt="raw")
    disk = dump.read_bytes()
    assert disk[512:1024] == sector and disk[:512] == sector
    qemu_io(base, "read -P 0 512 512")  # sector 2 of the template is still zeros
