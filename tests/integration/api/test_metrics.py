"""GET /metrics: Prometheus' own parser reads it, its counters move with the requests and events that happen, its
database gauges count rows at scrape time, and nobody reads it anonymously."""
from __future__ import annotations

import pytest
from prometheus_client.parser import text_string_to_metric_families

from core.enums import JobState


def _samples(response) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(response.text) for s in family.samples}


def _value(samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def test_request_counter_moves_by_route_template(client):
    before = _samples(client.get("/metrics"))
    assert client.get("/api/v1/tags").status_code == 200
    assert client.get("/api/v1/tags").status_code == 200
    assert client.get("/api/v1/desktops/no-such-desktop").status_code == 404
    after = _samples(client.get("/metrics"))
    tags = {"method": "GET", "route": "/api/v1/tags", "status": "200"}
    assert _value(after, "vdi_http_requests_total", **tags) - _value(before, "vdi_http_requests_total", **tags) == 2
    # by the template, never the raw path (one series per desktop id would have no end)
    missing = {"method": "GET", "route": "/api/v1/desktops/{item_id}", "status": "404"}
    assert _value(after, "vdi_http_requests_total", **missing) - \
        _value(before, "vdi_http_requests_total", **missing) == 1
    assert not any("no-such-desktop" in str(labels) for _name, labels in after)
    count = {"method": "GET", "route": "/api/v1/tags"}
    assert _value(after, "vdi_http_request_duration_seconds_count", **count) - \
        _value(before, "vdi_http_request_duration_seconds_count", **count) == 2


def test_database_gauges_and_event_counters(client):
    from event_manager.service import emit
    from manager import db
    from manager.models import Job

    before = _samples(client.get("/metrics"))
    with db.session_scope() as session:
        session.add_all([Job(kind="image.import", state=JobState.FAILED) for _ in range(3)])
        emit(session, "ha.fencing_skipped", "no host is fenced: too many are unreachable at once (the network)")
    with pytest.raises(RuntimeError), db.session_scope() as session:  # rolled back: neither written nor counted
        session.add(Job(kind="image.import", state=JobState.FAILED))
        emit(session, "ha.fencing_skipped", "rolled back")
        session.flush()
        raise RuntimeError("roll back")
    after = _samples(client.get("/metrics"))
    assert _value(after, "vdi_jobs", kind="image.import", state="failed") == 3
    assert _value(after, "vdi_events_total", code="ha.fencing_skipped") - \
        _value(before, "vdi_events_total", code="ha.fencing_skipped") == 1
    assert _value(after, "vdi_ha_actions_total", action="fence", outcome="skipped") - \
        _value(before, "vdi_ha_actions_total", action="fence", outcome="skipped") == 1


def test_never_anonymous_and_the_metrics_token(anon_client, admin_token, monkeypatch):
    from manager.config import get_settings

    assert anon_client.get("/metrics").status_code == 401
    assert anon_client.get("/metrics", headers={"Authorization": "Bearer not-a-token"}).status_code == 401
    monkeypatch.setenv("VDI_METRICS_TOKEN", "scraper-secret-0123456789")
    get_settings.cache_clear()
    assert anon_client.get("/metrics", headers={"Authorization": "Bearer scraper-secret-0123456789"}) \
        .status_code == 200
    assert anon_client.get("/metrics", headers={"Authorization": "Bearer scraper-secret-wrong"}).status_code == 401
    assert anon_client.get("/metrics", headers={"Authorization": f"Bearer {admin_token}"}).status_code == 200


def test_broker_connects_are_counted_by_outcome(client):
    before = _samples(client.get("/metrics"))
    refused = client.post("/api/v1/broker/connect", json={"pool": "no-such-pool"})
    assert refused.status_code == 404, refused.text
    after = _samples(client.get("/metrics"))
    code = refused.json()["error"]
    labels = {"via": "api", "outcome": code}
    assert _value(after, "vdi_broker_connects_total", **labels) - \
        _value(before, "vdi_broker_connects_total", **labels) == 1
