"""Golden results: every worked example of tests/data/search/upstream-examples.tsv that maps onto our objects, and the
white paper's examples, run through GET /api/v1/search against the fixture inventory (dataset.py) in Postgres.

Expected values are names (Events: messages, Users: usernames, Disks: paths); a list means the order matters.
Examples that name things we do not have are either run as written (they must fail with the class given) and,
where a faithful adaptation exists, also run adapted ("<id>a"). Deviations are commented.
"""
from __future__ import annotations

import pytest

ALL_VMS = {"web1", "web2", "db1", "testdesktop", "vm1", "stale1", "my vm", "50%"}
SEVERE_EVENTS = {"disk error on web2", "host gonzo.example.com overheating", "testdesktop paused",
                 "db1 image illegal", "host1 cpu high"}
SINCE_JAN_15 = {"testdesktop paused", "disk error on web2", "db1 image illegal", "desktop web1 started",
                "host1 cpu high"}


class Err(str):
    """An expected error class."""


GOLDEN = [
    # ---- documentation examples (D) ----
    ("D1", "Hosts: Vms.status = up page 2", ["vs-a"], 1),
    ("D2", "Vms: domain = qa.company.com", Err("FREE_TEXT_ALLOWED_ONCE_PER_OBJ"), None),
    ("D3", "Vms: users.name = Mary", {"web2", "db1", "testdesktop"}, None),
    ("D4", "Events: severity > normal sortby time",
     ["host gonzo.example.com overheating", "testdesktop paused", "disk error on web2", "db1 image illegal",
      "host1 cpu high"], None),
    ("D5", "events: severity > normal sortby time desc",
     ["host1 cpu high", "db1 image illegal", "disk error on web2", "testdesktop paused",
      "host gonzo.example.com overheating"], None),
    ("D6", "Vms: users.name = m* AND status = Up", {"web2"}, None),
    ("D7", 'Vms: users.name = m* AND tag = "paris-loc"', {"testdesktop"}, None),
    ("D8", 'Vms: template.name = Win* and user.name = ""', {"web1"}, None),
    ("D9", "Vms: cluster = Default and os = windows7", Err("INVALID_CONDITION_VALUE"), None),
    # rhel_6 is no OsType of ours (our os names are core.enums.OsType values)
    ("D10", "Hosts: cluster = Default and Vms.os = rhel_6", Err("INVALID_CONDITION_VALUE"), None),
    ("D10a", "Hosts: cluster = Default and Vms.os = rhel_9x64", {"host1"}, None),
    ("D11", "Template: Events.severity >= normal and Vms.uptime > 0", {"WinXP-office", "rhel9"}, None),
    ("D12", "Users: Events.severity > normal and Vms.status = up or Vms.status = pause",
     Err("INVALID_CONDITION_VALUE"), None),
    ("D12a", "Users: Events.severity > normal and Vms.status = up or Vms.status = paused", {"mary", "admin"}, None),
    ("D13", "Pools: type = automatic", {"eng-pool"}, None),
    ("D14", "Events: Vms.name = testdesktop and Hosts.name = gonzo.example.com", {"testdesktop paused"}, None),
    ("D15", "Datacenter: type = nfs and status != up", Err("INVALID_SEARCH_OBJECT"), None),  # no data centers
    ("D16", "Clusters: initialized = true or name = Default", Err("FREE_TEXT_ALLOWED_ONCE_PER_OBJ"), None),
    ("D17", "Storage: free_size > 6 GB and total_size < 20 GB", Err("FREE_TEXT_ALLOWED_ONCE_PER_OBJ"), None),
    ("D17a", "Storage: free_size > 6 and total_size < 20", {"sd1"}, None),
    # `format` is one of our Disks fields (upstream dropped it): valid here, and no volume is 'cow'
    ("D18", "Disks: format = cow and provisioned_size > 8", set(), None),
    ("D18a", "Disks: format = qcow2 and provisioned_size > 9000000000",
     {"/srv/sd1/web1/disk.qcow2", "/srv/iscsi/web2/disk.qcow2"}, None),
    ("D19", "Network: mtu > 1500 and vmnetwork = true", Err("INVALID_SEARCH_OBJECT"), None),
    ("D20", "Hosts: Vms.status = down", {"fake1"}, None),
    # ---- upstream unit tests (T) ----
    ("T1", "Host: sortby cpu_usage desc", ["vs-a", "host1", "gonzo.example.com", "fake1"], None),
    ("T2", 'Host: name ="test1" sortby cpu_usage desc', [], None),
    ("T3", "Host: CPU_USAGE > 80 sortby cpu_usage desc", ["vs-a", "host1"], None),
    ("T4", 'Host: user.name = "user1" sortby cpu_usage desc', ["host1"], None),
    # storage is shared by every host (no data centers): every host "has" sd1
    ("T5", 'Host: STORAGE.name = "sd1" sortby cpu_usage desc', ["vs-a", "host1", "gonzo.example.com", "fake1"],
     None),
    ("T6", "Host: EVENT.severity=error and CPU_USAGE > 80 sortby cpu_usage desc", ["host1"], None),
    ("T7", "Host: EVENT.severity=error and tag=tag1 sortby cpu_usage desc", ["host1"], None),
    ("T8", 'Host: vm.name="vm1"', {"host1"}, None),
    ("T9", "Vms: cluster = default and Templates.name = template_1 and Storage.name = storage_1 and "
           "Vnic.network_name = vnic_1", Err("FREE_TEXT_ALLOWED_ONCE_PER_OBJ"), None),  # no vNICs here
    ("T9a", "Vms: cluster = default and Templates.name = WinXP* and Storage.name = sd1", {"web1"}, None),
    ("T10", "Vm: status=Up or status=PoweringUp or status=MigratingTo or status=WaitForLaunch or "
            "status=RebootInProgress or status=PoweringDown or status=Paused or status=Unknown sortby cpu_usage desc",
     ["web1", "vm1", "testdesktop", "web2"], None),
    ("T11", 'Vm: user.name = "user1" and user.tag="tag1"', {"vm1"}, None),
    ("T12", "Vm: mac=00:1a:4a:d4:53:94", set(), None),
    # ip sorts as text here (upstream: numerically); these addresses order the same either way
    ("T13", "Vms: SORTBY IP DESC", ["testdesktop", "web2", "web1", "50%", "db1", "my vm", "stale1", "vm1"], None),
    ("T15", 'Event: host.name = "host1"', ["host1 cpu high", "disk error on web2"], None),
    ("T16", "Events: Templates.name=Blank", {"db1 image illegal"}, None),
    ("T17", "Template: hosts.name = fake1", {"Blank"}, None),
    ("T18", "Templates: Users.usrname = *", {"Blank", "WinXP-office", "rhel9"}, None),
    ("T19", "Templates: Users = *", {"Blank", "WinXP-office", "rhel9"}, None),
    ("T20", "Users:type=user tag=foo", {"mary"}, None),
    ("T21", "Users:type=user vm.id=foo", set(), None),
    ("T23", "DataCenter: sortby name", Err("INVALID_SEARCH_OBJECT"), None),
    ("T24", "Cluster:namepref*", {"eu-west"}, None),
    ("T25", "Vms: status=up and storage=iscsi", {"web2"}, None),
    ("T26", "network: CLUSTER_NETWORK.network_name=cluster1 and name=network1", Err("INVALID_SEARCH_OBJECT"), None),
    ("T27", "quota: STORAGEPOOLNAME=pool", Err("INVALID_SEARCH_OBJECT"), None),
    ("T28", "VMs:tag=all", set(), None),
    ("T29", "disk: alias=vm1", set(), None),
    ("T29a", "Disks: alias = *web1*", {"/srv/sd1/web1/disk.qcow2"}, None),
    ("T30", "Event: severity=alert", {"host gonzo.example.com overheating"}, None),
    # ---- constructed examples (C) ----
    ("C1", "Vms: cpu_usage > 90 and host = vs-a", {"web1"}, None),
    ("C2", "Vms: user.username = *John* and template.name = *xp*", Err("INVALID_CONDITION_FILED"), None),
    ("C3", "Vms: users.usrname = *John* and template.name = *xp*", {"web1"}, None),
    ("C4", 'Vms: name = "my vm"', {"my vm"}, None),
    ("C5", "Vms: name != web*", ALL_VMS - {"web1", "web2"}, None),
    # parentheses: an error upstream, the documented extension here (search_dsl/parser.py)
    ("C8", "Vms: name = a* and (status = up or status = paused)", set(), None),
    ("C8a", "Vms: name = *e* and (status = up or status = paused)", {"web1", "web2", "testdesktop"}, None),
    ("C10", "Vms: uptime > 01:30", {"web1", "testdesktop"}, None),
    ("C13", "Events: time = today", {"desktop web1 started", "host1 cpu high"}, None),
    ("C14", "Events: time > 01/15/2024", SINCE_JAN_15, None),
    ("C16", "Vms: creationdate > today", Err("INVALID_CONDITION_VALUE"), None),
    ("C17", "Vms: os = rhel_7x64", Err("INVALID_CONDITION_VALUE"), None),  # not one of our os names
    ("C17a", "Vms: os = rhel_9x64", {"web2", "vm1"}, None),
    ("C19", "Vms: apps = firefox", {"web1", "web2"}, None),
    ("C20", 'Vms: description = ""', {"web2", "vm1", "stale1"}, None),
    ("C21", "Vms: description != test", ALL_VMS, None),
    ("C25", "Vms: name = 50%", {"50%"}, None),
    ("C26", "Vms: name = O'Brien", Err("INVALID_CHARECTER"), None),
    ("C28", 'Vms: "web server"', {"testdesktop"}, None),
    ("C30", "Vms: name = x page 2 sortby name", Err("NOTHING_COMES_AFTER_PAGE_VALUE"), None),
    ("C31", "Vms: STATUS = UP", {"web1", "web2"}, None),
    ("C32", "Vms: name > x", Err("INVALID_CONDITION_RELATION"), None),
    ("C33", "Vms: cpu_usage = abc", Err("INVALID_CONDITION_VALUE"), None),
    ("C34", "Vms: status = running", Err("INVALID_CONDITION_VALUE"), None),
    ("C35", "Vms: on_host = host1", {"web2", "vm1"}, None),
    ("C37", "Hosts: load > 1.5", Err("FREE_TEXT_ALLOWED_ONCE_PER_OBJ"), None),  # hosts report no load here
    ("C38", "Hosts: Nic.network_name = ovirtmgmt", Err("FREE_TEXT_ALLOWED_ONCE_PER_OBJ"), None),  # no NICs
    ("C41", "Pools: assigned_vm_count = 3", set(), None),
    ("C41a", "Pools: assigned_vm_count = 1", {"fin-pool"}, None),
    ("C41b", "Pools: running_vm_count = 1", {"eng-pool"}, None),
    ("C42", "Events: severity >= warning", SEVERE_EVENTS, None),
    ("C43", "Events: host.name = host1", ["host1 cpu high", "disk error on web2"], None),
    ("C44", "Network: provider_name = ovn*", Err("INVALID_SEARCH_OBJECT"), None),
    ("C45", "Disks: vm_names = web1", {"/srv/sd1/web1/disk.qcow2"}, None),
    ("C46", "Vms: Hosts != h1", {"web1", "web2", "testdesktop", "vm1", "stale1"}, None),
    ("C47", "Vms: name=x or name=y or name=z and status=up status=down", set(), None),
    ("C48", "Vms: tag = prod or tag = dev", {"web1", "db1", "web2"}, None),
    ("C49", "Vms: tag = a and tag = b", set(), None),
    ("C49a", "Vms: tag = prod and tag = prod-eu", {"db1"}, None),
    ("C51", "Vms: Vnics.mac = x", Err("FREE_TEXT_ALLOWED_ONCE_PER_OBJ"), None),  # no vNICs here
    ("C52", "Vms: Hosts.cpu_usage > 80", {"web1", "web2", "vm1"}, None),
    ("C53", 'Vms: name = "a b"c', Err("INCOMPLETE"), None),
    ("C54", "Templates: name = rhel* sortby name desc", ["rhel9"], None),
    ("C55", "Users: Vms.name = web1", {"john.smith", "svc"}, None),
    ("C57", 'Events: time > "Jan 15, 2024 10:00:00 AM"', SINCE_JAN_15, None),
    ("C58", "Vms: name = x && status = up", set(), None),
    ("C59", "Vms: web and Hosts = h1", set(), None),
    ("C59a", "Vms: web and Hosts = host", {"web2"}, None),
    ("C61", 'Vms: "name"', set(), None),
    ("C62", "Storage: datacenter = Default", Err("FREE_TEXT_ALLOWED_ONCE_PER_OBJ"), None),  # no data centers
    ("C63", "Vms: name = *", ALL_VMS, None),
    ("C64", 'Users: usrname = "john smith@internal"', {"john smith"}, None),
    ("C65", "Vms: page 0", Err("INVALID_PAGE_VALUE"), None),
    ("C66", "Hosts: status != up and status != maintenance", {"fake1"}, None),
    ("C67", "Events: severity > Warning and severity < alert", {"disk error on web2", "db1 image illegal"}, None),
    ("C68", "Vms: name = web1 or name = web2 or name = web3", {"web1", "web2"}, None),
    ("C69", "Vms: Users.usrname = admin@internal", {"testdesktop"}, None),
    ("C70", "Vms: up and name = x", set(), None),
    # ---- the white paper, with our field names ----
    ("W1", "Vms: Users.usrname = *john* and Templates.name = *xp* and apps = *office*", {"web1"}, None),
    ("W2", "Vms: cpu_usage > 90 and Hosts.name = vs-a", {"web1"}, None),
]

# Our own objects and fields beyond the spec's examples.
MORE = [
    ("Vms: web", {"web1", "web2", "testdesktop"}),
    ("Vms: Default", {"web1", "web2", "db1", "vm1"}),  # cluster names take part in free text
    ("Vms: cluster = eu-west", {"testdesktop", "stale1"}),
    ("Vms: pool = eng-pool", {"web2", "db1"}),
    # != on a related value also matches rows with no related row (upstream's `IS NULL OR`)
    ("Vms: pool != eng-pool", ALL_VMS - {"web2", "db1"}),
    ("Vms: on_host != host1", ALL_VMS - {"web2", "vm1"}),
    ("Vms: cluster != Default", {"testdesktop", "stale1", "my vm", "50%"}),
    ("Vms: Hosts.cluster = eu*", {"testdesktop", "stale1"}),
    ("Vms: paris", {"testdesktop"}),  # tag names take part in free text
    ("Vms: tag = prod", {"web1", "db1"}),
    ("Vms: tag != prod", ALL_VMS - {"web1"}),
    ("Vms: loggedinuser = bob", {"vm1"}),
    ("Vms: address = *.corp.example", {"web1"}),
    ("Vms: ip = 10.1.0.*", {"web1", "web2", "testdesktop"}),
    ("Vms: memory >= 2048 and vcpus > 2", {"web2"}),
    ("Vms: creationdate < 1/15/2024", {"web1", "db1"}),
    ("Vms: status = migratingfrom", {"vm1"}),
    ("Vms: status = suspended", {"50%"}),
    ("Vms: status = WaitForLaunch", set()),
    ("Vms: status != WaitForLaunch", ALL_VMS),
    ("Vms: type = desktop", ALL_VMS),
    ("Vms: type = server", set()),
    ("Vms: protocols = rdp", {"web2"}),
    ("Vms: task = migrating and ha_enabled = true and ha_priority > 10", {"vm1"}),
    ("Vms: Events.severity = error", {"web2", "db1", "web1"}),  # the deleted event counts, as upstream's join
    ("Vms: Storage.name = iscsi-store", {"web2"}),
    # a template's versions are multi-valued: vm1 runs rhel9's base version, but rhel9 has a v2
    ("Vms: Templates.version_name = v2", {"web2", "vm1"}),
    ("Vms: Users.tag = foo", {"web2", "db1", "testdesktop"}),
    ("Vms: not (Hosts.name = host1)", ALL_VMS - {"web2", "vm1"}),
    ("Hosts: cluster = eu-west", {"gonzo.example.com", "fake1"}),
    ("Hosts: cpu_model = amd* and cpus >= 32", {"gonzo.example.com"}),
    ("Hosts: version = 9.0.0 and ksm = true", {"vs-a"}),
    ("Hosts: active_vms = 2 and memory > 60000", {"host1"}),
    ("Hosts: Templates.name = rhel9", {"host1"}),
    ("Hosts: Users.usrname = mary", {"host1", "gonzo.example.com"}),
    ("Hosts: ha_score = 3400", {"host1"}),
    ("Hosts: main", {"host1"}),
    ("Templates: version_name = v2", {"rhel9"}),
    ("Templates: childcount >= 2", {"Blank", "WinXP-office", "rhel9"}),
    ("Templates: childcount > 2", set()),
    ("Templates: status = locked", {"rhel9"}),
    ("Templates: os = windows_xp and mem = 1024", {"WinXP-office"}),
    ("Templates: creationdate = 01/20/2024", {"rhel9"}),
    ("Templates: tag = prod", {"rhel9"}),
    ("Templates: Storage.name = iscsi*", {"rhel9"}),
    ("Templates: Events.message = *illegal*", {"Blank"}),
    ("Templates: apps = office", {"WinXP-office"}),
    ("Users: lastname = smith", {"john.smith", "john smith"}),
    ("Users: login = john*", {"john.smith", "john smith"}),
    ("Users: usrname = *@corp", {"john.smith"}),
    ("Users: directory = internal and department = finance", {"mary"}),
    ("Users: user_and_domain = mary@internal", {"mary"}),
    ("Users: pool = eng-pool", {"john.smith"}),
    ("Users: tag = tag1", {"user1"}),
    ("Users: Hosts.name = gonzo*", {"mary", "admin"}),
    ("Users: Templates.name = Blank", {"mary"}),
    ("Users: Events.type = desktop.started", {"john.smith"}),
    ("Users: Smith", {"john.smith", "john smith"}),
    ("Groups: name = eng*", {"engineers"}),
    ("Groups: directory = corp", {"engineers", "finance"}),
    ("Pools: cluster = eu-west", {"fin-pool"}),
    ("Pools: type = manual and template = WinXP*", {"fin-pool"}),
    ("Pools: floating", {"eng-pool"}),
    ("Events: type = host.*", {"host gonzo.example.com overheating", "host1 cpu high"}),
    ("Events: usrname = admin@internal", {"host1 cpu high"}),
    ("Events: correlation_id = corr-42", {"host1 cpu high"}),
    ("Events: event_vm = web* and severity = error", {"disk error on web2"}),
    ("Events: event_host = gonzo*", {"host gonzo.example.com overheating", "testdesktop paused"}),
    ("Events: event_template = Blank", {"db1 image illegal"}),
    ("Events: event_pool = eng-pool", {"disk error on web2"}),
    ("Events: deleted = true", set()),
    ("Events: Users.name = John", {"desktop web1 started"}),
    ("Events: Clusters.name = eu-west", {"host gonzo.example.com overheating", "testdesktop paused"}),
    ("Events: illegal", {"db1 image illegal"}),
    ("Clusters: cpu_type = amd*", {"eu-west"}),
    ("Clusters: comment = rack*", {"eu-west"}),
    ("Storage: description = *lun*", {"iscsi-store"}),
    ("Storage: used_size > 100", {"iscsi-store"}),
    ("Storage: Hosts.name = nowhere", set()),
    ("Disks: status = locked", {"/srv/iscsi/web2/disk.qcow2"}),
    ("Disks: number_of_vms = 0", {"/srv/sd1/templates/blank.qcow2"}),
    ("Disks: Storage.name = sd1 and actual_size > 2000000000", {"/srv/sd1/web1/disk.qcow2"}),
    ("Disks: role = template", {"/srv/sd1/templates/blank.qcow2"}),
]

LABELS = {"Vm": "name", "Host": "name", "Template": "name", "User": "username", "Group": "name", "Pool": "name",
          "Event": "message", "Cluster": "name", "Storage": "name", "Disk": "path"}


def search(api, query, page_size=None):
    params = {"q": query}
    if page_size:
        params["page_size"] = page_size
    return api.get("/api/v1/search", params=params)


def labels(body):
    return [item[LABELS[body["object"]]] for item in body["items"]]


def check(api, query, expected, page_size=None):
    response = search(api, query, page_size)
    if isinstance(expected, Err):
        assert response.status_code == 400, response.text
        assert response.json()["error"] == expected, response.json()
        return
    assert response.status_code == 200, response.text
    body = response.json()
    got = labels(body)
    if isinstance(expected, list):
        assert got == expected
        if page_size is None:
            assert body["total"] == len(expected)
    else:
        assert set(got) == expected
        assert len(got) == len(set(got)), "an entity came back twice"
        assert body["total"] == len(expected)


@pytest.mark.parametrize("example, query, expected, page_size", GOLDEN, ids=[g[0] for g in GOLDEN])
def test_spec_examples(api, example, query, expected, page_size):
    check(api, query, expected, page_size)


@pytest.mark.parametrize("query, expected", MORE, ids=[m[0] for m in MORE])
def test_our_fields(api, query, expected):
    check(api, query, expected)


def test_id_is_exact(api, inventory):
    web1 = inventory.desktop_ids["web1"]
    check(api, f"Vms: id = {web1}", {"web1"})
    check(api, f"Vms: id != {web1}", ALL_VMS - {"web1"})
    check(api, f"Users: Vms.id = {web1}", {"john.smith", "svc"})


def test_uptime_counts_from_the_last_start_and_is_zero_when_down(api):
    check(api, "Vms: uptime > 1", {"web1"})  # days
    check(api, "Vms: uptime < 00:45", {"vm1", "db1", "stale1", "my vm"})  # down desktops have 0 s; 50% never started


def test_paging_shape(api):
    body = search(api, "Vms: sortby name asc page 2", page_size=3).json()
    assert body["object"] == "Vm" and body["kind"] == "desktop"
    assert (body["total"], body["page"], body["page_size"], body["pages"]) == (8, 2, 3, 3)
    assert labels(body) == ["stale1", "testdesktop", "vm1"]
    assert set(body["items"][0]) >= {"id", "power_state", "host_id"}  # DesktopOut
    last = search(api, "Vms: sortby name asc page 4", page_size=3).json()
    assert last["items"] == [] and last["total"] == 8


def test_secrets_are_not_searchable_and_not_returned(api):
    response = search(api, "Hosts: agent_token = secret*")
    assert response.status_code == 400
    body = search(api, "Hosts: secret").json()
    assert body["items"] == []
    assert all("agent_token" not in item for item in search(api, "Hosts: name = *").json()["items"])


def test_case_sensitive_flag(api):
    assert labels(api.get("/api/v1/search", params={"q": "Vms: name = WEB1"}).json()) == ["web1"]
    body = api.get("/api/v1/search", params={"q": "Vms: name = WEB1", "case_sensitive": "true"}).json()
    assert body["items"] == []


@pytest.mark.parametrize("query, page_size", [("Vms: sortby name asc page 2", 3), ("Vms: tag != nothing page 3", 3),
                                              ("Events: severity >= normal", 100), ("Vms: page 9", 1),
                                              # sort keys that are expressions over several columns
                                              ("Vms: sortby uptime desc page 2", 3),
                                              ("Events: sortby severity desc", 4),
                                              ("Hosts: sortby cpu_usage desc page 2", 1)])
def test_many_matches_take_the_index_path_with_the_same_answer(api, monkeypatch, query, page_size):
    few = search(api, query, page_size).json()
    monkeypatch.setattr("manager.api.search.FEW_MATCHES", 2)  # every result below counts as "many"
    many = search(api, query, page_size).json()
    assert many == few
    assert few["total"] > 2
