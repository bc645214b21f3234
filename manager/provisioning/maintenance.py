"""The pool maintenance loop's period: every `period` seconds the leader manager expires time-based leases (reclaim
jobs are enqueued) and tops up prestarted desktops (manager.provisioning.tasks.maintain_pools, run as a singleton
loop by manager/api/broker.py's lifespan). Each step is also a compare-and-swap, so a lease is reclaimed (and its
event written) once, and a desktop is started once."""
from __future__ import annotations

import logging
import os

log = logging.getLogger(__name__)
DEFAULT_PERIOD_S = 30.0


def configured_period() -> float:
    """VDI_POOL_MAINTENANCE_SECONDS (30 by default); 0 turns the loop off."""
    try:
        return max(0.0, float(os.environ.get("VDI_POOL_MAINTENANCE_SECONDS", DEFAULT_PERIOD_S)))
    except ValueError:
        log.warning("VDI_POOL_MAINTENANCE_SECONDS is not a number; using %s", DEFAULT_PERIOD_S)
        return DEFAULT_PERIOD_S
