"""Workload and run profiles: the shipped defaults load, orders are seeded per desktop, and each mistake is named."""
from __future__ import annotations

import pytest
import yaml

from planner.profiles import DEFAULT_WORKLOAD, load_run, load_workload, run_from, workload_from
from planner.scoring import PlannerInputError


def test_the_shipped_defaults_load():
    workload = load_workload()
    assert {op.label: (op.code, op.group) for op in workload.operations} == {
        "word-open": (11, "B"), "word-type": (12, "A"), "word-save": (13, "B"), "browser-browse": (21, "A"),
        "archive-compress": (31, "C"), "video-play": (41, "C")}
    run = load_run()
    assert (run.users, run.mode, run.name_prefix, run.threshold_a_s) == (2, "local", "planner-", 1.5)


def test_orders_are_seeded_per_desktop_and_iteration():
    workload = load_workload()
    first = [op.label for op in workload.iteration_order("d1", 0)]
    assert first == [op.label for op in workload.iteration_order("d1", 0)]
    others = {tuple(op.label for op in workload.iteration_order(f"d{i}", 0)) for i in range(2, 12)}
    assert len(others | {tuple(first)}) > 1  # desktops do not move in lockstep
    assert sorted(first) == sorted(op.label for op in workload.operations)  # medium: every operation once


def test_mixes():
    base = yaml.safe_load(DEFAULT_WORKLOAD.read_text())
    light = workload_from({**base, "mix": "light"})
    assert light.think_time_s == 20.0
    assert {op.group for op in light.iteration_order("d", 0)} == {"A", "B"}
    heavy = workload_from({**base, "mix": "heavy", "think_time_s": 1})
    assert heavy.think_time_s == 1.0
    assert sum(op.group == "C" for op in heavy.iteration_order("d", 0)) == 4
    assert 0.75 <= heavy.think_time("d", 0, 3) <= 1.25


@pytest.mark.parametrize("change, message", [
    ({"mix": "extreme"}, "mix must be one of light, medium, heavy"),
    ({"iterations": 0}, "iterations must be a whole number >= 1"),
    ({"applications": {"Word": {"id": 1, "operations": {"open": {"id": 1, "group": "A"}}}}}, "'Word' is not a valid"),
    ({"applications": {"word": {"id": 1, "operations": {"open": {"id": 1, "group": "D"}}}}}, "group must be A"),
    ({"applications": {"w": {"id": 1, "operations": {"a": {"id": 1, "group": "A"}}},
                       "v": {"id": 1, "operations": {"b": {"id": 1, "group": "A"}}}}}, "event code 11 is also w-a"),
    ({"applications": {"w": {"id": 1, "operations": {"a": {"id": 12, "group": "A"}}}}}, "id must be 0-9"),
    ({"colour": "blue"}, "unknown key(s) colour"),
])
def test_bad_workloads_are_named(change, message):
    base = yaml.safe_load(DEFAULT_WORKLOAD.read_text())
    with pytest.raises(PlannerInputError) as err:
        workload_from({**base, **change})
    assert message in str(err.value)


@pytest.mark.parametrize("data, message", [
    ({"users": 2}, "desktops: expected a mapping"),
    ({"users": 2, "desktops": {"pool": "p", "name_prefix": "x"}}, "exactly one of pool, name_prefix or search"),
    ({"desktops": {"pool": "p"}}, "users is required"),
    ({"users": 2, "desktops": {"pool": "p"}, "mode": "telepathy"}, "mode must be one of local, remote, passive"),
    ({"users": 2, "desktops": {"pool": "p"}, "thresholds": {"a_s": 0}}, "a_s must be a number > 0"),
    ({"users": 2, "desktops": {"pool": "p"}, "admin": {"boot": {}}}, "unknown key(s) boot"),
])
def test_bad_run_profiles_are_named(data, message):
    with pytest.raises(PlannerInputError) as err:
        run_from(data)
    assert message in str(err.value)


def test_bad_yaml_names_the_line(tmp_path):
    path = tmp_path / "w.yaml"
    path.write_text("name: x\napplications: [unclosed\n")
    with pytest.raises(PlannerInputError) as err:
        load_workload(path)
    assert "not valid YAML at line" in str(err.value)
