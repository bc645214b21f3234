"""The import rules of docs/architecture.md, checked on the source (AST), so a violation fails the build."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SIDE_SERVICES = ("broker", "image_manager", "ha_manager", "event_manager", "policy_engine")


def imported_modules(package: str, root: Path = ROOT) -> list[tuple[str, str]]:
    """(file, imported module) for every import statement in a package."""
    out = []
    for path in (root / package).rglob("*.py"):
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                out.extend((str(path.relative_to(root)), alias.name) for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                out.append((str(path.relative_to(root)), node.module))
    return out


def top(module: str) -> str:
    return module.split(".")[0]


def test_packages_exist():
    for package in ("core", "manager", "broker", "image_manager", "ha_manager", "event_manager",
                    "hypervisor_node", "search_dsl", "migrations", "planner", "policy_engine"):
        assert (ROOT / package / "__init__.py").exists(), package


def test_hypervisor_node_never_imports_manager_sqlalchemy_or_fastapi():
    bad = [(f, m) for f, m in imported_modules("hypervisor_node") if top(m) in {"manager", "sqlalchemy", "fastapi"}]
    assert bad == []


def test_only_hypervisor_node_imports_libvirt():
    offenders = []
    for package in ("core", "manager", "broker", "image_manager", "ha_manager", "event_manager", "search_dsl",
                    "migrations", "bench", "planner", "policy_engine"):
        offenders += [(f, m) for f, m in imported_modules(package) if top(m) == "libvirt"]
    assert offenders == []


def test_planner_is_a_client_of_the_manager():
    """planner/ drives the manager through its API only (the manager imports planner's pure parts, not the reverse)."""
    bad = [(f, m) for f, m in imported_modules("planner")
           if top(m) in {"manager", "sqlalchemy", "fastapi", "hypervisor_node", "broker", "image_manager",
                         "ha_manager", "event_manager"}]
    assert bad == []


def test_search_dsl_never_imports_manager():
    assert [(f, m) for f, m in imported_modules("search_dsl") if top(m) == "manager"] == []


def test_core_is_pure():
    allowed = {"core", "__future__"}
    bad = [(f, m) for f, m in imported_modules("core")
           if top(m) not in allowed and top(m) in {"manager", "sqlalchemy", "fastapi", "libvirt", "hypervisor_node"}]
    assert bad == []


@pytest.mark.parametrize("package", SIDE_SERVICES)
def test_side_services_do_not_import_each_other(package):
    others = set(SIDE_SERVICES) - {package}
    # A side service's `service` module is its public API (e.g. event_manager.service.emit); the rest is internal.
    bad = [(f, m) for f, m in imported_modules(package)
           if top(m) in others and m != f"{top(m)}.service"]
    assert bad == []


def test_the_checker_sees_a_violation(tmp_path):
    """The checker itself must be able to fail."""
    fake = tmp_path / "hypervisor_node"
    fake.mkdir()
    (fake / "bad.py").write_text("import sqlalchemy\nfrom manager.models import Desktop\nfrom . import x\n")
    assert {m for _, m in imported_modules("hypervisor_node", root=tmp_path)} == {"sqlalchemy", "manager.models"}
