"""Every job kind says what becomes of it when the process running it dies (issue 18: no job stays RUNNING)."""
from __future__ import annotations

from manager import jobs


def test_every_job_kind_declares_what_a_crash_does():
    undecided = sorted(kind for kind, registered in jobs.kinds().items() if registered.on_crash is None)
    assert undecided == [], (f"job kinds {undecided} do not say what recovery does when their runner dies: "
                             "@task(kind, on_crash=OnCrash.RESUME) when its steps are idempotent, else "
                             "OnCrash.FAIL (with a recover hook that undoes its partial work)")


def test_only_failed_kinds_have_a_recover_hook():
    """A resumed job finishes its own work: a recover hook there would never run (and so must not exist)."""
    assert [k for k, r in jobs.kinds().items() if r.recover is not None and r.on_crash != jobs.OnCrash.FAIL] == []
