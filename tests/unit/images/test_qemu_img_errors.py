"""qemu-img messages become typed errors (the real-process cases are in tests/integration/images)."""
from __future__ import annotations

import pytest

from core.errors import Invalid
from image_manager import qemu_img
from image_manager.errors import (
    ImageCorrupt,
    ImageInUse,
    ImageInvalid,
    ImageNotFound,
    ImageToolError,
    StorageFull,
)


@pytest.mark.parametrize(
    ("stderr", "expected", "status"),
    [
        ("qemu-img: Could not open '/s/x.qcow2': Could not open '/s/x.qcow2': No such file or directory",
         ImageNotFound, 404),
        ("qemu-img: Could not open '/s/o.qcow2': Could not open backing file: Could not open '/s/b.qcow2': "
         "No such file or directory", ImageNotFound, 404),
        ('qemu-img: Could not open \'/s/o.qcow2\': Failed to get shared "write" lock\n'
         "Is another process using the image [/s/o.qcow2]?", ImageInUse, 409),
        ("qemu-img: Could not open '/s/j': Image is not in qcow2 format", ImageInvalid, 422),
        ("qemu-img: error while writing at byte 0: No space left on device", StorageFull, 507),
        ("qemu-img: Could not open '/s/o.qcow2': qcow2: Image is corrupt; cannot be opened read/write",
         ImageCorrupt, 500),
        ("qemu-img: Use the --shrink option to perform a shrink operation.", ImageInvalid, 422),
        ("qemu-img: something nobody expected", ImageToolError, 500),
        ("", ImageToolError, 500),
    ],
)
def test_translate_error(stderr, expected, status):
    err = qemu_img.translate_error("info", "/s/o.qcow2", stderr, 1)
    assert type(err) is expected and err.status == status
    if stderr:
        # qemu-img's own words reach the operator, minus the program-name prefix.
        assert stderr.splitlines()[0].removeprefix("qemu-img: ")[:30] in err.message
    assert "Traceback" not in err.message


def test_missing_backing_file_names_the_overlay():
    err = qemu_img.translate_error(
        "convert", "/s/o.qcow2",
        "qemu-img: Could not open '/s/o.qcow2': Could not open backing file: Could not open '/s/b.qcow2': "
        "No such file or directory", 1)
    assert "backing file of /s/o.qcow2" in err.message and "/s/b.qcow2" in err.message


def test_bad_arguments_are_refused_before_running(tmp_path):
    with pytest.raises(Invalid, match="image format"):
        qemu_img.info(tmp_path / "x", fmt="vhdx")
    with pytest.raises(Invalid, match="needs a size"):
        qemu_img.create(tmp_path / "x")
    with pytest.raises(Invalid, match="positive"):
        qemu_img.create(tmp_path / "x", size=-1)
    with pytest.raises(Invalid, match="exactly one"):
        qemu_img.measure()
    with pytest.raises(Invalid, match="repair"):
        qemu_img.check(tmp_path / "x", repair="everything")  # type: ignore[arg-type]
    with pytest.raises(ImageNotFound):
        qemu_img.convert(tmp_path / "missing", tmp_path / "out")
