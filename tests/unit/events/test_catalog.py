"""The event catalog: every code the source emits is declared (read from the source by AST, and the codes built at
run time from their enumerations), emitting an undeclared code raises, and docs/events.md is generated from it."""
from __future__ import annotations

import ast
import importlib.util
import re
from pathlib import Path

import pytest
from sqlalchemy.orm import Session

from event_manager.catalog import CATALOG, UndeclaredEvent, declare
from event_manager.service import emit

ROOT = Path(__file__).resolve().parents[3]
PACKAGES = ("manager", "broker", "image_manager", "ha_manager", "hypervisor_node", "event_manager")
# Calls whose code is a variable, and the literal codes that reach it there.
INDIRECT = {"manager/tagging.py": ("_record", {"tag.attached", "tag.detached"}),
            "manager/identity/login.py": ("emit_refusal", {"user.login_failed", "user.login_refused"})}


def emitted_codes(source: str) -> tuple[set[str], set[str], int]:
    """(literal codes, regexes of f-string codes, calls with a variable code) of the emit() calls in `source`."""
    literals, patterns, variables = set(), set(), 0
    for node in ast.walk(ast.parse(source)):
        if not (isinstance(node, ast.Call) and len(node.args) >= 2
                and getattr(node.func, "id", getattr(node.func, "attr", None)) == "emit"):
            continue
        code = node.args[1]
        if isinstance(code, ast.JoinedStr):
            patterns.add("".join(re.escape(part.value) if isinstance(part, ast.Constant) else "[a-z_.]+"
                                 for part in code.values))
        elif isinstance(code, ast.Name):
            variables += 1
        else:  # a constant, or a choice between constants (`"a" if x else "b"`)
            found = {n.value for n in ast.walk(code) if isinstance(n, ast.Constant) and isinstance(n.value, str)}
            assert found, f"an emit() code of an unknown shape: {ast.unparse(code)}"
            literals |= found
    return literals, patterns, variables


def source_files():
    for package in PACKAGES:
        yield from sorted((ROOT / package).rglob("*.py"))


def test_every_code_the_source_emits_is_declared():
    undeclared, unmatched, seen = [], [], 0
    for path in source_files():
        literals, patterns, variables = emitted_codes(path.read_text(encoding="utf-8"))
        relative = path.relative_to(ROOT).as_posix()
        seen += len(literals) + len(patterns)
        undeclared += [f"{relative}: {code}" for code in sorted(literals - CATALOG.keys())]
        unmatched += [f"{relative}: {p}" for p in patterns if not any(re.fullmatch(p, c) for c in CATALOG)]
        if variables:
            assert relative in INDIRECT, f"{relative} emits a code held in a variable: list it in INDIRECT"
            helper, codes = INDIRECT[relative]
            text = path.read_text(encoding="utf-8")
            assert f"def {helper}(" in text and all(f'"{c}"' in text for c in codes)
            undeclared += [f"{relative}: {c}" for c in sorted(codes - CATALOG.keys())]
    assert seen > 80  # the scan found the emitters (it cannot pass by reading nothing)
    assert undeclared == [], "declare these codes in event_manager/catalog.py"
    assert unmatched == [], "no declared code matches these codes built at run time"


def test_the_scan_finds_an_undeclared_code_and_a_code_built_at_run_time():
    literals, patterns, variables = emitted_codes(
        'emit(s, "nope.never", "m")\nevents.emit(s, "a" if x else "b", "m")\nemit(s, f"job.{s}", "m")\n'
        'emit(s, code, "m")\nprint(s, "not.an.event")')
    assert literals == {"nope.never", "a", "b"} and variables == 1
    assert patterns == {r"job\.[a-z_.]+"} and re.fullmatch(patterns.pop(), "job.failed")


def test_codes_built_from_enumerations_are_declared():
    from core.enums import JobState
    from image_manager.tasks import DESKTOP_DISK_KINDS
    from manager.api.resources import RESOURCES
    from manager.provisioning.power import PAST, PowerAction

    codes = [f"{r.event_code}.{verb}" for r in RESOURCES for verb in ("created", "updated", "deleted")]
    codes += [f"job.{state.value}" for state in JobState if state not in (JobState.PENDING, JobState.RUNNING)]
    codes += [f"desktop.{a.value}_failed" for a in PowerAction]
    codes += [f"desktop.{PAST[a].replace(' ', '_')}" for a in PowerAction]
    codes += [f"desktop.{k.removeprefix('image.')}_failed" for k in DESKTOP_DISK_KINDS]
    codes += [f"desktop.{k.removeprefix('image.')}" for k in DESKTOP_DISK_KINDS
              if k not in ("image.snapshot", "image.reimage")]  # those two record snapshot_created, reimaged
    assert [c for c in codes if c not in CATALOG] == []


def test_an_undeclared_code_cannot_be_emitted():
    session = Session()  # no database: the code is refused before anything is recorded
    with pytest.raises(UndeclaredEvent, match="host.on_fire"):
        emit(session, "host.on_fire", "it burns", host_id="h1")
    assert not session.info.get("vdi_pending_events")


def test_a_code_is_declared_once_and_its_objects_exist():
    from core.enums import Severity

    with pytest.raises(ValueError, match="declared twice"):
        declare("host.up", Severity.NORMAL, "host", "again")
    with pytest.raises(ValueError, match="objects must be among"):
        declare("x.y", Severity.NORMAL, "planet", "no such object")
    with pytest.raises(ValueError, match="need an object"):
        declare("x.z", Severity.NORMAL, (), "suppressed per nothing", suppress_s=60)
    assert "x.y" not in CATALOG and "x.z" not in CATALOG


def test_alert_codes_name_declared_alert_kinds():
    from event_manager.alerts import KINDS

    opened = {t.opens for t in CATALOG.values() if t.opens} | {k for t in CATALOG.values() for k in t.clears}
    assert opened and opened <= KINDS.keys()


def _reference():
    spec = importlib.util.spec_from_file_location("event_reference", ROOT / "scripts" / "event_reference.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_docs_list_every_code_generated_from_the_catalog():
    reference = _reference()
    doc = (ROOT / "docs" / "events.md").read_text(encoding="utf-8")
    assert reference.committed(doc) == reference.generate(), \
        "docs/events.md is out of date: run python scripts/event_reference.py --write"
    assert all(f"| `{code}` |" in doc for code in CATALOG)
