"""A cluster's policies as the API takes them (`PUT /api/v1/clusters/{id}/policies`) and the engine reads them.

Validated by pydantic: an unknown key, a value out of range or thresholds that contradict each other are a 422
naming the field. Times of day are "HH:MM" in UTC. The defaults switch every policy off: a cluster decides nothing
until an administrator enables a policy.
"""
from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

_TIME = re.compile(r"^([01]\d|2[0-3]):([0-5]\d)$")


class _Part(BaseModel):
    model_config = ConfigDict(extra="forbid")


class LoadBalancing(_Part):
    enabled: bool = False
    cpu_high_percent: int = Field(80, ge=1, le=100, description="a host above this CPU usage sheds desktops")
    memory_high_percent: int = Field(85, ge=1, le=100, description="a host above this memory usage sheds desktops")
    hysteresis_percent: int = Field(10, ge=0, le=50, description="a host sheds until it is this far under its "
                                    "threshold, and takes desktops only while it stays there: no ping-pong")
    max_concurrent_migrations: int = Field(2, ge=1, le=1000, description="live migrations in flight at once, "
                                           "those of power saving included")

    @model_validator(mode="after")
    def _band(self) -> "LoadBalancing":
        if self.hysteresis_percent >= min(self.cpu_high_percent, self.memory_high_percent):
            raise ValueError("hysteresis_percent must be smaller than both thresholds")
        return self


class PowerSaving(_Part):
    enabled: bool = False
    off_hours_start: str = Field("20:00", description="HH:MM UTC: from here hosts may be emptied and powered off")
    off_hours_end: str = Field("07:00", description="HH:MM UTC: off hours end; hosts in standby come back")
    idle_cpu_percent: int = Field(10, ge=0, le=100, description="a desktop busier than this keeps its host on")
    min_hosts_up: int = Field(1, ge=1, le=10000, description="never fewer hosts up in the cluster")
    min_free_memory_percent: int = Field(20, ge=0, le=90, description="free memory kept on the hosts that are up; "
                                         "under it a host in standby is powered back on")
    wake_before_minutes: int = Field(30, ge=0, le=1440, description="power hosts on this long before a pool's "
                                     "calendar window opens")

    @field_validator("off_hours_start", "off_hours_end")
    @classmethod
    def _hhmm(cls, value: str) -> str:
        if not _TIME.match(value):
            raise ValueError(f"{value!r} is not a time of day as HH:MM (00:00 to 23:59)")
        return value

    @property
    def off_hours_start_minute(self) -> int:
        h, m = self.off_hours_start.split(":")
        return int(h) * 60 + int(m)

    @property
    def off_hours_end_minute(self) -> int:
        h, m = self.off_hours_end.split(":")
        return int(h) * 60 + int(m)


class IdleRule(_Part):
    action: Literal["suspend", "shutdown"] = "suspend"
    after_minutes: int = Field(30, ge=0, le=100_000, description="minutes a desktop's user stays disconnected")


class IdleDesktops(_Part):
    enabled: bool = False
    pools: dict[str, IdleRule] = Field(default_factory=dict, description="by pool id")


class MemoryDensity(_Part):
    ksm_enabled: bool | None = Field(None, description="KSM on (true) or off (false) on every host that is up; "
                                     "null leaves KSM as each host has it")
    ksm_pages_to_scan: int = Field(100, ge=1, le=1_000_000)
    ksm_sleep_millisecs: int = Field(20, ge=0, le=60_000)
    ksm_merge_across_nodes: bool = Field(True, description="merge pages of different NUMA nodes (the kernel takes "
                                         "a change only while no page is shared)")
    balloon_enabled: bool = False
    balloon_idle_minutes: int = Field(15, ge=0, le=100_000)
    balloon_reclaim_percent: int = Field(50, ge=1, le=90, description="share of an idle desktop's memory taken back")
    balloon_min_mib: int = Field(256, ge=64, le=1_048_576, description="an idle desktop keeps at least this")

    def ksm_settings(self) -> dict[str, Any]:
        return {"run": 1 if self.ksm_enabled else 0, "pages_to_scan": self.ksm_pages_to_scan,
                "sleep_millisecs": self.ksm_sleep_millisecs,
                "merge_across_nodes": 1 if self.ksm_merge_across_nodes else 0}


class ClusterPolicies(_Part):
    """Every policy of one cluster."""

    load_balancing: LoadBalancing = Field(default_factory=LoadBalancing)
    power_saving: PowerSaving = Field(default_factory=PowerSaving)
    idle_desktops: IdleDesktops = Field(default_factory=IdleDesktops)
    memory_density: MemoryDensity = Field(default_factory=MemoryDensity)

    @property
    def max_concurrent_migrations(self) -> int:
        return self.load_balancing.max_concurrent_migrations


def parse(text: str | None) -> ClusterPolicies:
    """The stored JSON (validated when it was stored); the defaults when there is none."""
    return ClusterPolicies.model_validate_json(text) if text else ClusterPolicies()
