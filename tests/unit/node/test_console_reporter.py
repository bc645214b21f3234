"""The node agent's console reporter: libvirt's graphics events (one per SPICE channel or VNC connection) become
one report when a desktop's first client attached and one when its last client left; reports the manager did not
take are kept, in order, and sent again. The manager's side of the exchange runs against a real manager in
tests/integration/broker/test_real_guests.py (a real VNC client on a real guest)."""
from __future__ import annotations

import asyncio

import httpx

from hypervisor_node.consoles import ConsoleReporter
from hypervisor_node.driver import GraphicsEvent, LibvirtDriver

DESKTOP = "0b1c6a52-7f0e-4c55-9d2b-6f4f2f0d1a11"


def reporter(transport=None) -> ConsoleReporter:
    # the driver is only held: nothing here opens a libvirt connection
    return ConsoleReporter(LibvirtDriver("test:///default"), "vs-a", "http://manager.invalid", "tok",
                           transport=transport)


def ev(phase: str, client: str, protocol: str = "spice") -> GraphicsEvent:
    return GraphicsEvent(DESKTOP, phase, protocol, client)


def test_spice_channels_make_one_attach_and_one_detach():
    r = reporter()
    r.record(ev("connect", "192.0.2.5:40001"))
    assert r.pending() == []  # a TCP connection is not a client yet: it has not passed authentication
    for port in (40001, 40002, 40003):  # main, display, inputs
        r.record(ev("initialize", f"192.0.2.5:{port}"))
    r.record(ev("disconnect", "192.0.2.5:40002"))
    r.record(ev("disconnect", "192.0.2.5:40003"))
    assert [e["attached"] for e in r.pending()] == [True]
    r.record(ev("disconnect", "192.0.2.5:40001"))
    reports = r.pending()
    assert [(e["desktop_id"], e["attached"], e["protocol"], e["client"]) for e in reports] == [
        (DESKTOP, True, "spice", "192.0.2.5"), (DESKTOP, False, "spice", "192.0.2.5")]
    assert reports[0]["at"] <= reports[1]["at"] and reports[0]["at"].endswith("+00:00")


def test_a_refused_client_is_never_attached():
    r = reporter()
    r.record(ev("connect", "192.0.2.6:5000", "vnc"))
    r.record(ev("disconnect", "192.0.2.6:5000", "vnc"))  # wrong password: no initialize
    assert r.pending() == []


def test_reports_wait_for_the_manager_and_keep_their_order():
    answers = [503, 200]
    seen = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append((request.url.path, request.headers["authorization"], request.read()))
        return httpx.Response(answers.pop(0), json={})

    r = reporter(httpx.MockTransport(handler))
    r.record(ev("initialize", "192.0.2.5:1"))
    r.record(ev("disconnect", "192.0.2.5:1"))

    async def twice():
        async with httpx.AsyncClient(transport=r._transport) as client:
            return [await r.deliver(client), await r.deliver(client)]

    assert asyncio.run(twice()) == [False, True]
    assert r.pending() == []
    assert [path for path, _, _ in seen] == ["/api/v1/nodes/vs-a/console-events"] * 2
    assert seen[0][1] == "Bearer tok" and seen[0][2] == seen[1][2]  # the same reports, in order, sent again


def test_a_domain_that_stops_loses_its_clients():
    """QEMU reports no disconnect when the domain stops: the lifecycle event ends its clients, so the next start's
    first client is reported as attached again."""
    r = reporter()
    r.record(ev("initialize", "192.0.2.5:1", "vnc"))
    r.record(GraphicsEvent(DESKTOP, "stopped", "", ""))
    r.record(GraphicsEvent(DESKTOP, "stopped", "", ""))  # nothing attached any more: no second report
    r.record(ev("initialize", "192.0.2.5:2", "vnc"))
    assert [(e["attached"], e["client"]) for e in r.pending()] == [(True, "192.0.2.5"), (False, ""),
                                                                     (True, "192.0.2.5")]
