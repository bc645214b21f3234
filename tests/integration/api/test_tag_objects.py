"""POST / DELETE /api/v1/tags/{id}/objects: attach a tag to objects and detach it, idempotently, with an event each;
unknown ids are a 422 naming them; HelpDesk may not; what is attached here is what `Vms: tag = x` finds."""
from __future__ import annotations

import pytest
from sqlalchemy import func, select

from core.enums import Role
from manager import db
from manager.models import Cluster, Desktop, Event, Host, RoleAssignment, Tag, TagAssignment, User
from manager.tagging import TAGGED_KINDS
from tests.integration.broker.conftest import job_ended


@pytest.fixture
def inventory(client):
    with db.session_scope() as session:
        desktops = [Desktop(name=f"tagged-{i}") for i in range(3)]
        cluster = Cluster(name="tag-cluster")
        session.add(cluster)
        session.flush()
        host = Host(name="tag-host", agent_token="t", cluster_id=cluster.id)
        tag = Tag(name="region-eu")
        session.add_all([*desktops, host, tag])
        session.flush()
        return {"desktops": [d.id for d in desktops], "host": host.id, "tag": tag.id}


def _assignments(kind: str = "desktop") -> set[str]:
    with db.session_scope() as session:
        return set(session.scalars(select(TagAssignment.object_id).where(TagAssignment.object_kind == kind)))


def _events(code: str) -> list[Event]:
    with db.session_scope() as session:
        rows = list(session.scalars(select(Event).where(Event.code == code).order_by(Event.id)))
        session.expunge_all()
        return rows


def test_attach_is_idempotent_and_recorded_once(client, inventory):
    ids = inventory["desktops"][:2]
    url = f"/api/v1/tags/{inventory['tag']}/objects"
    first = client.post(url, json={"kind": "desktop", "ids": ids})
    assert first.status_code == 200, first.text
    assert first.json() == {"tag": "region-eu", "kind": "desktop", "changed": 2, "ids": ids}
    again = client.post(url, json={"kind": "desktop", "ids": [*ids, inventory["desktops"][2]]})
    assert again.json()["changed"] == 1
    assert _assignments() == set(inventory["desktops"])
    events = _events("tag.attached")
    assert len(events) == 2
    assert "tagged 2 desktops: tagged-0, tagged-1 with region-eu" in events[0].message
    assert events[1].desktop_id == inventory["desktops"][2]  # one object: on that desktop's events
    assert client.post(url, json={"kind": "desktop", "ids": ids}).json()["changed"] == 0
    assert len(_events("tag.attached")) == 2  # nothing changed, nothing recorded


def test_detach_is_idempotent(client, inventory):
    url = f"/api/v1/tags/{inventory['tag']}/objects"
    client.post(url, json={"kind": "desktop", "ids": inventory["desktops"]})
    gone = client.request("DELETE", url, json={"kind": "desktop", "ids": inventory["desktops"][:1]})
    assert gone.status_code == 200, gone.text
    assert gone.json()["changed"] == 1
    assert client.request("DELETE", url, json={"kind": "desktop", "ids": inventory["desktops"][:1]}).json()[
        "changed"] == 0
    assert _assignments() == set(inventory["desktops"][1:])
    [event] = _events("tag.detached")
    assert "removed tag region-eu from desktop tagged-0" in event.message


def test_unknown_ids_are_a_422_naming_them_and_change_nothing(client, inventory):
    url = f"/api/v1/tags/{inventory['tag']}/objects"
    response = client.post(url, json={"kind": "desktop", "ids": [inventory["desktops"][0], "no-such-id"]})
    assert response.status_code == 422
    assert "no-such-id" in response.json()["detail"] and inventory["desktops"][0] not in response.json()["detail"]
    assert _assignments() == set()
    # a host's id is no desktop's
    wrong_kind = client.post(url, json={"kind": "desktop", "ids": [inventory["host"]]})
    assert wrong_kind.status_code == 422 and inventory["host"] in wrong_kind.json()["detail"]
    assert client.request("DELETE", url, json={"kind": "desktop", "ids": ["gone"]}).status_code == 422


@pytest.mark.parametrize("body", [{"kind": "desktop", "ids": []}, {"kind": "desktop", "ids": ["x"] * 1001},
                                  {"kind": "pool", "ids": ["x"]}, {"kind": "desktop"}])
def test_bad_bodies_are_422(client, inventory, body):
    assert client.post(f"/api/v1/tags/{inventory['tag']}/objects", json=body).status_code == 422


def test_an_unknown_tag_is_a_404(client, inventory):
    response = client.post("/api/v1/tags/no-such-tag/objects", json={"kind": "desktop", "ids": inventory["desktops"]})
    assert response.status_code == 404


def test_every_taggable_kind_is_found_by_its_search(client, inventory):
    with db.session_scope() as session:
        user = User(username="tagged user", domain="corp")
        session.add(user)
        session.flush()
        user_id = user.id
    url = f"/api/v1/tags/{inventory['tag']}/objects"
    assert client.post(url, json={"kind": "desktop", "ids": inventory["desktops"][1:]}).status_code == 200
    assert client.post(url, json={"kind": "host", "ids": [inventory["host"]]}).status_code == 200
    assert client.post(url, json={"kind": "user", "ids": [user_id]}).status_code == 200
    found = client.get("/api/v1/search", params={"q": "Vms: tag = region-eu"}).json()
    assert sorted(item["id"] for item in found["items"]) == sorted(inventory["desktops"][1:])
    assert [h["name"] for h in client.get("/api/v1/search", params={"q": "Hosts: tag = region-eu"}).json()["items"]] \
        == ["tag-host"]
    assert [u["id"] for u in client.get("/api/v1/search", params={"q": "Users: tag = region-eu"}).json()["items"]] \
        == [user_id]
    client.request("DELETE", url, json={"kind": "desktop", "ids": inventory["desktops"][1:2]})
    assert client.get("/api/v1/search", params={"q": "Vms: tag = region-eu"}).json()["total"] == 1
    # every kind that can be tagged is one the search finds by tag
    searched = {"desktop": "Vms", "host": "Hosts", "template": "Templates", "user": "Users"}
    assert set(TAGGED_KINDS) == set(searched)
    for plural in searched.values():
        assert client.get("/api/v1/search", params={"q": f"{plural}: tag = region-eu"}).status_code == 200


def test_helpdesk_may_not_tag(client, inventory):
    from manager.auth import issue_token

    with db.session_scope() as session:
        user = User(username="helpdesk", domain="local")
        session.add(user)
        session.flush()
        session.add(RoleAssignment(user_id=user.id, role=Role.HELP_DESK))
        token = issue_token(session, user, name="tests")
    headers = {"Authorization": f"Bearer {token}"}
    url = f"/api/v1/tags/{inventory['tag']}/objects"
    body = {"kind": "desktop", "ids": inventory["desktops"]}
    assert client.post(url, json=body, headers=headers).status_code == 403
    assert client.request("DELETE", url, json=body, headers=headers).status_code == 403
    with db.session_scope() as session:
        assert session.scalar(select(func.count()).select_from(TagAssignment)) == 0


def test_deleting_a_tagged_object_removes_its_tags(client, inventory):
    """Assignments name their object by kind and id (no foreign key): deleting the object must take them along, by
    the API's DELETE (hosts, users, desktops...) and by the removal job's end (deprovisioned desktops)."""
    from core.enums import TaskState
    from manager.provisioning.service import disk_work, finish_removal

    with db.session_scope() as session:
        user = User(username="leaver", domain="local")
        session.add(user)
        session.flush()
        user_id = user.id
    url = f"/api/v1/tags/{inventory['tag']}/objects"
    deleted, deprovisioned, kept = inventory["desktops"]
    assert client.post(url, json={"kind": "desktop", "ids": inventory["desktops"]}).status_code == 200
    assert client.post(url, json={"kind": "host", "ids": [inventory["host"]]}).status_code == 200
    assert client.post(url, json={"kind": "user", "ids": [user_id]}).status_code == 200

    removal = client.delete(f"/api/v1/desktops/{deleted}")  # a desktop goes by its removal job
    assert removal.status_code == 202, removal.text
    assert job_ended(client, removal.json()["id"])["state"] == "succeeded"
    for path in (f"/api/v1/hosts/{inventory['host']}", f"/api/v1/users/{user_id}"):
        response = client.delete(path)
        assert response.status_code == 204, (path, response.text)
    with db.session_scope() as session:
        session.get(Desktop, deprovisioned).task_state = TaskState.DELETING
    with db.session_scope() as session:
        assert finish_removal(session, disk_work(session, deprovisioned, TaskState.DELETING))

    assert _assignments("desktop") == {kept}
    assert _assignments("host") == set() and _assignments("user") == set()
    found = client.get("/api/v1/search", params={"q": "Vms: tag = region-eu"})
    assert found.status_code == 200 and [item["id"] for item in found.json()["items"]] == [kept]
    for plural in ("Hosts", "Users"):
        response = client.get("/api/v1/search", params={"q": f"{plural}: tag = region-eu"})
        assert response.status_code == 200 and response.json()["total"] == 0, response.text
