"""docs/search-language.md is the users' reference: its field tables are generated from the registry, and its
examples are run through the parser against our catalogue, so neither can drift from the code."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from manager.search_fields import REGISTRY
from search_dsl.errors import ERROR_CLASSES, SearchError
from search_dsl.parser import parse

ROOT = Path(__file__).resolve().parents[3]
DOC = ROOT / "docs" / "search-language.md"
EXAMPLE_ROW = re.compile(r"^\| `(?P<query>[^`]+)` \| (?P<outcome>valid(?: \(extension\))?|[A-Z_]+) \| .* \|$")


def _reference():
    import importlib.util
    spec = importlib.util.spec_from_file_location("search_reference", ROOT / "scripts" / "search_reference.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def doc_examples() -> list[tuple[str, str]]:
    text = DOC.read_text(encoding="utf-8")
    section = text[text.index("## 11. Examples"):]
    return [(m["query"], m["outcome"]) for m in map(EXAMPLE_ROW.match, section.splitlines()) if m]


def test_field_tables_are_generated_from_the_registry():
    reference = _reference()
    assert reference.committed(DOC.read_text(encoding="utf-8")) == reference.generate(REGISTRY), \
        "docs/search-language.md is out of date: run python scripts/search_reference.py --write"


def test_generated_tables_name_every_visible_field_of_every_searchable_object():
    generated = _reference().generate(REGISTRY)
    for obj in REGISTRY.objects.values():
        if obj.searchable:
            section = generated.split(f"### {obj.name}\n", 1)[1].split("\n### ", 1)[0]
            for name in obj.visible_field_names():
                assert f"| `{name}` |" in section, (obj.name, name)


def test_the_doc_has_examples_of_valid_queries_extensions_and_errors():
    outcomes = {outcome for _, outcome in doc_examples()}
    assert {"valid", "valid (extension)"} <= outcomes
    assert len(outcomes - {"valid", "valid (extension)"}) >= 10


@pytest.mark.parametrize(("query", "outcome"), doc_examples(), ids=lambda v: v[:60])
def test_doc_example(query, outcome):
    if outcome.startswith("valid"):
        parsed = parse(query, REGISTRY)
        assert parsed.extended == (outcome == "valid (extension)")
    else:
        assert outcome in ERROR_CLASSES
        with pytest.raises(SearchError) as info:
            parse(query, REGISTRY)
        assert info.value.error_class == outcome, str(info.value)


def test_every_error_class_is_explained():
    text = DOC.read_text(encoding="utf-8")
    table = text[text.index("## 10. Errors"):text.index("## 11. Examples")]
    for error_class in ERROR_CLASSES:
        assert re.search(rf"\b{error_class}\b", table), error_class
