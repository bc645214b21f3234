"""fileops.resolve_inside refuses a name the file system cannot hold with a 422, not a 500 (found by the API fuzz,
tests/integration/api/test_schemathesis.py: an export's target_dir or a template's boot_initrd of 5,000 characters
raised ENAMETOOLONG from stat())."""
from __future__ import annotations

import pytest

from core.errors import Invalid
from image_manager import fileops


@pytest.mark.parametrize("kind", ["dir", "file"])
@pytest.mark.parametrize("name", ["0" * 5000, "c" * 256])
def test_a_name_too_long_for_the_file_system_is_invalid(tmp_path, kind, name):
    with pytest.raises(Invalid, match="cannot be used in the export directories: File name too long"):
        fileops.resolve_inside(name, [tmp_path], what="target_dir", where="export directories", kind=kind)
