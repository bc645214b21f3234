"""A request that waits long with no transaction open gives its session slot up (manager.db.give_up_request_slot):
with a single slot, a second request gets through while the first waits; and with a single worker thread too, the
first one still finishes after its wait (taking a slot back would leave it waiting for the slot that the second
request holds while that one waits for the thread)."""
from __future__ import annotations

import concurrent.futures
import contextlib
import threading

import anyio.to_thread
from fastapi import FastAPI
from fastapi.testclient import TestClient

from manager import db
from manager.api.common import DbSession


def _app(give_up: bool, entered: threading.Event, second_ran: threading.Event, threads: int | None) -> FastAPI:
    @contextlib.asynccontextmanager
    async def lifespan(_app):
        if threads is not None:
            anyio.to_thread.current_default_thread_limiter().total_tokens = threads
        yield

    app = FastAPI(lifespan=lifespan)

    @app.get("/waits")
    def waits(session: DbSession) -> dict:
        entered.set()  # this request holds the only slot now
        if give_up:
            db.give_up_request_slot(session)
        ran = second_ran.wait(2)
        session.info["after the wait"] = True  # the session still serves the rest of the request
        return {"second_ran_meanwhile": ran}

    @app.get("/quick")
    def quick(session: DbSession) -> dict:
        second_ran.set()
        return {}

    return app


def _run_both(give_up: bool, monkeypatch, tmp_path, threads: int | None = None) -> dict:
    monkeypatch.setattr(db, "REQUEST_SLOTS", 1)
    db.configure(f"sqlite:///{tmp_path / 'slots.db'}")  # never connected to: neither route runs a statement
    entered, second_ran = threading.Event(), threading.Event()
    with TestClient(_app(give_up, entered, second_ran, threads)) as client, \
            concurrent.futures.ThreadPoolExecutor(2) as ex:
        waiting = ex.submit(client.get, "/waits")
        assert entered.wait(30)
        quick = ex.submit(client.get, "/quick")
        first = waiting.result(timeout=30).json()
        assert quick.result(timeout=30).status_code == 200
        return first


def test_a_long_wait_gives_its_slot_to_the_next_request(monkeypatch, tmp_path):
    assert _run_both(True, monkeypatch, tmp_path) == {"second_ran_meanwhile": True}


def test_a_request_that_gave_its_slot_up_finishes_even_when_every_thread_is_taken(monkeypatch, tmp_path):
    assert _run_both(True, monkeypatch, tmp_path, threads=1) == {"second_ran_meanwhile": False}


def test_without_giving_it_up_the_second_request_waits_for_the_slot(monkeypatch, tmp_path):
    assert _run_both(False, monkeypatch, tmp_path) == {"second_ran_meanwhile": False}
