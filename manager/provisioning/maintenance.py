"""The pool maintenance loop: every `period` seconds, expire time-based leases (reclaim jobs are enqueued) and
top up prestarted desktops. Safe to run in every manager process at once: each step is a compare-and-swap,
so a lease is reclaimed (and its event written) once, and a desktop is started once."""
from __future__ import annotations

import logging
import os
import threading

from manager.provisioning.tasks import maintain_pools

log = logging.getLogger(__name__)
DEFAULT_PERIOD_S = 30.0


def configured_period() -> float:
    """VDI_POOL_MAINTENANCE_SECONDS (30 by default); 0 turns the loop off."""
    try:
        return max(0.0, float(os.environ.get("VDI_POOL_MAINTENANCE_SECONDS", DEFAULT_PERIOD_S)))
    except ValueError:
        log.warning("VDI_POOL_MAINTENANCE_SECONDS is not a number; using %s", DEFAULT_PERIOD_S)
        return DEFAULT_PERIOD_S


class PoolMaintainer:
    """A daemon thread running maintain_pools() every `period` seconds until stopped."""

    def __init__(self, period: float) -> None:
        self.period = period
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="vdi-pool-maintenance", daemon=True)
        self._failing = False

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=30)

    def _run(self) -> None:
        while not self._stop.wait(self.period):
            try:
                maintain_pools()
                if self._failing:
                    log.info("pool maintenance works again")
                self._failing = False
            except Exception:  # survive a database or node hiccup; log the transition, not every repeat
                if not self._failing:
                    log.exception("pool maintenance failed; retrying every %.0f s", self.period)
                self._failing = True
