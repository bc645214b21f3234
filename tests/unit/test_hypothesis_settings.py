"""No hypothesis test in this suite has a deadline (a wall-clock assertion; see tests/conftest.py)."""
from __future__ import annotations

import ast
from pathlib import Path

from hypothesis import HealthCheck, settings

TESTS = Path(__file__).resolve().parents[1]


def timing_settings(root: Path = TESTS) -> list[str]:
    """Every settings(...) call under `root` that sets a deadline other than None, or re-enables
    too_slow by naming its own health checks without it, as 'file:line'."""
    found = []
    for path in root.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if not (isinstance(node, ast.Call) and getattr(node.func, "id", getattr(node.func, "attr", "")) in
                    ("settings", "register_profile")):
                continue
            keywords = {k.arg: k.value for k in node.keywords}
            deadline = keywords.get("deadline")
            suppressed = keywords.get("suppress_health_check")
            if deadline is not None and not (isinstance(deadline, ast.Constant) and deadline.value is None):
                found.append(f"{path.relative_to(root)}:{node.lineno} sets a deadline")
            if suppressed is not None and "too_slow" not in ast.unparse(suppressed):
                found.append(f"{path.relative_to(root)}:{node.lineno} lets the too_slow health check run")
    return found


def test_the_loaded_profile_has_no_deadline_and_no_too_slow_check():
    assert settings.default.deadline is None
    assert HealthCheck.too_slow in settings.default.suppress_health_check


def test_no_test_brings_a_wall_clock_limit_back():
    assert timing_settings() == []


def test_the_checker_sees_a_deadline(tmp_path):
    (tmp_path / "test_x.py").write_text(
        "from hypothesis import settings, HealthCheck\n"
        "@settings(deadline=200)\ndef a(): pass\n"
        "@settings(deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])\ndef b(): pass\n"
        "@settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])\ndef c(): pass\n")
    assert timing_settings(tmp_path) == ["test_x.py:2 sets a deadline",
                                         "test_x.py:4 lets the too_slow health check run"]
