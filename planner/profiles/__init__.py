"""Workload and run profiles (YAML) and their validation; the defaults ship as package data in this directory."""
from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from planner.scoring import DEFAULT_THRESHOLD_S, DEFINITIONS, GROUPS, PlannerInputError

HERE = Path(__file__).resolve().parent
DEFAULT_WORKLOAD = HERE / "default-workload.yaml"
DEFAULT_RUN = HERE / "default-run.yaml"
NAME_PATTERN = "[a-z][a-z0-9_-]{0,31}"  # the guest's application and operation names (docs/planner.md)
MODES = ("local", "remote", "passive")
# A mix sets the think time between operations and which groups run: light is the paper's 20 s think time on the
# timed groups only; medium adds the background load; heavy runs the background operations twice per iteration.
MIXES: dict[str, dict[str, Any]] = {
    "light": {"think_time_s": 20.0, "groups": ("A", "B"), "background_repeats": 0},
    "medium": {"think_time_s": 10.0, "groups": ("A", "B", "C"), "background_repeats": 1},
    "heavy": {"think_time_s": 2.0, "groups": ("A", "B", "C"), "background_repeats": 2},
}


@dataclass(frozen=True)
class Operation:
    app: str
    name: str
    app_id: int
    op_id: int
    group: str
    expected_s: float

    @property
    def code(self) -> int:
        """The watermark's event code: application id x 10 + operation id (the paper's NUM_SUBOPS = 10)."""
        return self.app_id * 10 + self.op_id

    @property
    def label(self) -> str:
        return f"{self.app}-{self.name}"


@dataclass
class Workload:
    name: str
    seed: int
    iterations: int
    mix: str
    think_time_s: float
    operations: list[Operation]

    @property
    def longest_expected_s(self) -> float:
        return max(op.expected_s for op in self.operations)

    def iteration_order(self, desktop: str, iteration: int) -> list[Operation]:
        """The operations of one iteration on one desktop, in an order randomised per desktop and iteration from the
        workload's seed (reproducible; desktops do not move in lockstep)."""
        groups = MIXES[self.mix]["groups"]
        repeats = MIXES[self.mix]["background_repeats"]
        chosen = [op for op in self.operations if op.group in groups and op.group != "C"]
        chosen += [op for op in self.operations if op.group == "C"] * repeats
        rng = random.Random(f"{self.seed}:{desktop}:{iteration}")
        rng.shuffle(chosen)
        return chosen

    def think_time(self, desktop: str, iteration: int, index: int) -> float:
        """Think time after one operation: the mix's (or the profile's) value, +-25 % jitter, seeded."""
        rng = random.Random(f"{self.seed}:think:{desktop}:{iteration}:{index}")
        return self.think_time_s * rng.uniform(0.75, 1.25)


@dataclass
class RunProfile:
    users: int
    mode: str
    name_prefix: str | None = None
    pool: str | None = None
    search: str | None = None
    ramp_up_s: float = 0.0
    power_on_rate_per_min: float = 30.0
    threshold_a_s: float = DEFAULT_THRESHOLD_S
    threshold_b_s: float = DEFAULT_THRESHOLD_S
    definition: str = "run"
    workload: str = "default"
    admin: dict[str, dict[str, Any]] = field(default_factory=dict)


ADMIN_OPERATIONS = ("provision", "power_on_storm", "logon_storm", "logoff_storm", "reimage")


def _load(path: Path | str) -> Any:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise PlannerInputError(f"{path}: cannot read it ({exc.strerror or exc})") from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise PlannerInputError(f"{path}: not valid YAML{where}: {getattr(exc, 'problem', exc)}") from None


def _mapping(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise PlannerInputError(f"{where}: expected a mapping (key: value lines), got {type(value).__name__}")
    return value


def _unknown(obj: dict[str, Any], allowed: set[str], where: str) -> None:
    extra = sorted(set(map(str, obj)) - allowed)
    if extra:
        raise PlannerInputError(f"{where}: unknown key(s) {', '.join(extra)}; allowed: {', '.join(sorted(allowed))}")


def _number(obj: dict[str, Any], key: str, where: str, default: Any = ..., *, integer: bool = False,
            minimum: float = 0.0, positive: bool = False) -> Any:
    if key not in obj:
        if default is ...:
            raise PlannerInputError(f"{where}: {key} is required")
        return default
    value = obj[key]
    kinds = (int,) if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kinds) or not math.isfinite(value) or value < minimum \
            or (positive and value <= 0):
        kind = "a whole number" if integer else "a number"
        bound = "> 0" if positive else f">= {minimum:g}"
        raise PlannerInputError(f"{where}: {key} must be {kind} {bound}, got {value!r}")
    return value


def _name(value: Any, where: str) -> str:
    import re

    if not isinstance(value, str) or not re.fullmatch(NAME_PATTERN, value):
        raise PlannerInputError(f"{where}: {value!r} is not a valid name: use {NAME_PATTERN} (the guest runs "
                                "/opt/planner/apps/NAME)")
    return value


def workload_from(data: Any, where: str = "workload") -> Workload:
    data = _mapping(data, where)
    _unknown(data, {"name", "seed", "iterations", "mix", "think_time_s", "applications"}, where)
    mix = data.get("mix", "medium")
    if mix not in MIXES:
        raise PlannerInputError(f"{where}: mix must be one of {', '.join(MIXES)}, got {mix!r}")
    think = _number(data, "think_time_s", where, None)
    apps = _mapping(data.get("applications"), f"{where}: applications")
    operations, codes = [], {}
    for app, spec in apps.items():
        app_where = f"{where}: applications.{app}"
        _name(app, app_where)
        spec = _mapping(spec, app_where)
        _unknown(spec, {"id", "operations"}, app_where)
        app_id = _number(spec, "id", app_where, integer=True, minimum=1)
        if app_id > 102:
            raise PlannerInputError(f"{app_where}: id must be 1-102 (event code = id x 10 + operation id <= 1023)")
        for op, op_spec in _mapping(spec.get("operations"), f"{app_where}.operations").items():
            op_where = f"{app_where}.operations.{op}"
            _name(op, op_where)
            op_spec = _mapping(op_spec, op_where)
            _unknown(op_spec, {"id", "group", "expected_s"}, op_where)
            op_id = _number(op_spec, "id", op_where, integer=True, minimum=0)
            if op_id > 9:
                raise PlannerInputError(f"{op_where}: id must be 0-9 (10 operations per application)")
            group = op_spec.get("group")
            if group not in GROUPS:
                raise PlannerInputError(f"{op_where}: group must be A (interactive), B (I/O) or C (background), "
                                        f"got {group!r}")
            operation = Operation(app, op, app_id, op_id, group,
                                  float(_number(op_spec, "expected_s", op_where, 10.0, positive=True)))
            if operation.code in codes:
                raise PlannerInputError(f"{op_where}: event code {operation.code} is also "
                                        f"{codes[operation.code]}'s; give the application or operation another id")
            codes[operation.code] = operation.label
            operations.append(operation)
    if not operations:
        raise PlannerInputError(f"{where}: applications list no operation")
    return Workload(name=str(data.get("name", "workload")),
                    seed=_number(data, "seed", where, 0, integer=True),
                    iterations=_number(data, "iterations", where, 1, integer=True, minimum=1),
                    mix=mix, think_time_s=float(think if think is not None else MIXES[mix]["think_time_s"]),
                    operations=operations)


def run_from(data: Any, where: str = "run profile") -> RunProfile:
    data = _mapping(data, where)
    _unknown(data, {"desktops", "users", "mode", "ramp_up_s", "power_on_rate_per_min", "thresholds", "definition",
                    "workload", "admin"}, where)
    desktops = _mapping(data.get("desktops"), f"{where}: desktops")
    _unknown(desktops, {"pool", "name_prefix", "search"}, f"{where}: desktops")
    chosen = [k for k in ("pool", "name_prefix", "search") if desktops.get(k)]
    if len(chosen) != 1:
        raise PlannerInputError(f"{where}: desktops needs exactly one of pool, name_prefix or search, got "
                                f"{', '.join(chosen) or 'none'}")
    for key in chosen:
        if not isinstance(desktops[key], str):
            raise PlannerInputError(f"{where}: desktops.{key} must be a string")
    mode = data.get("mode", "local")
    if mode not in MODES:
        raise PlannerInputError(f"{where}: mode must be one of {', '.join(MODES)}, got {mode!r}")
    definition = data.get("definition", "run")
    if definition not in DEFINITIONS:
        raise PlannerInputError(f"{where}: definition must be one of {', '.join(DEFINITIONS)}, got {definition!r}")
    thresholds = _mapping(data.get("thresholds", {}), f"{where}: thresholds")
    _unknown(thresholds, {"a_s", "b_s"}, f"{where}: thresholds")
    admin = _mapping(data.get("admin", {}) or {}, f"{where}: admin")
    _unknown(admin, set(ADMIN_OPERATIONS), f"{where}: admin")
    for key, value in admin.items():
        _mapping(value or {}, f"{where}: admin.{key}")
    workload = data.get("workload", "default")
    if not isinstance(workload, str) or not workload:
        raise PlannerInputError(f"{where}: workload must be 'default' or the path of a workload profile")
    return RunProfile(
        users=_number(data, "users", where, integer=True, minimum=1),
        mode=mode, pool=desktops.get("pool"), name_prefix=desktops.get("name_prefix"), search=desktops.get("search"),
        ramp_up_s=float(_number(data, "ramp_up_s", where, 0.0)),
        power_on_rate_per_min=float(_number(data, "power_on_rate_per_min", where, 30.0, positive=True)),
        threshold_a_s=float(_number(thresholds, "a_s", f"{where}: thresholds", DEFAULT_THRESHOLD_S, positive=True)),
        threshold_b_s=float(_number(thresholds, "b_s", f"{where}: thresholds", DEFAULT_THRESHOLD_S, positive=True)),
        definition=definition, workload=workload, admin={k: dict(v or {}) for k, v in admin.items()})


def load_workload(path: Path | str | None = None) -> Workload:
    """A workload profile from YAML (None or "default": the one shipped in this package)."""
    path = DEFAULT_WORKLOAD if path in (None, "default") else Path(path)
    return workload_from(_load(path), str(path))


def load_run(path: Path | str | None = None) -> RunProfile:
    path = DEFAULT_RUN if path in (None, "default") else Path(path)
    return run_from(_load(path), str(path))
