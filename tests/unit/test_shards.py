"""tests/shards.py, the rule that splits `make test` into its two shards, names only things that exist: a renamed
fixture, marker or file would otherwise silently move its tests into the light shard, beside the heavy one."""
from __future__ import annotations

import re
import tomllib
from pathlib import Path

from tests import shards

REPO = Path(__file__).resolve().parents[2]


def test_heavy_markers_are_declared_in_pyproject():
    declared = {line.split(":")[0] for line in
                tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["pytest"]["ini_options"]["markers"]}
    assert set(shards.HEAVY_MARKERS) <= declared


def test_heavy_fixtures_are_defined():
    sources = "\n".join(path.read_text() for path in (REPO / "tests").rglob("*.py"))
    for name in shards.HEAVY_FIXTURES:
        assert re.search(rf"@pytest\.fixture[^\n]*\n(?:@[^\n]*\n)*def {name}\(", sources), name


def test_heavy_files_exist():
    for path in shards.HEAVY_FILES:
        assert (REPO / path).is_file(), path
