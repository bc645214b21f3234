"""oVirt's search catalogue (objects, fields, enum names and cross-references of its *AutoCompleter classes)
as a Registry, for conformance tests.

Only the parser uses it, so entities and joins are placeholders: what matters is names, kinds, operators,
enum names, hidden flags and cross-references.
"""
from __future__ import annotations

from search_dsl.registry import (
    DATE_OPS, NUMERIC_OPS, STRING_OPS, Field, Kind, ObjectDef, Registry, Relation, TagTree, XRef,
)


def _no_join(outer, inner):  # pragma: no cover - the parser never calls joins
    raise AssertionError("the conformance catalogue has no joins")


TAGS = TagTree(entity=None)
TAG_RELATION = Relation("tags", None, _no_join)


def S(name, column=None, **kw):
    return Field(name, Kind.STRING, column, **kw)


def I(name, column=None, ops=NUMERIC_OPS, **kw):
    return Field(name, Kind.INT, column, operators=ops, **kw)


def E(name, values, column=None, **kw):
    if not isinstance(values, dict):
        values = {v: i for i, v in enumerate(values)}
    return Field(name, Kind.ENUM, column, values=values, **kw)


def B(name, column=None, **kw):
    return Field(name, Kind.BIT, column, **kw)


def U(name, column=None, **kw):
    return Field(name, Kind.UUID, column, **kw)


def L(name, column=None):
    """Disk sizes: 64-bit, and only < and > upstream."""
    return Field(name, Kind.LONG, column, operators=("<", ">"))


def TAG():
    return Field("tag", Kind.TAG, "name", via="tags", tags=TAGS)


def X(name, target=None, plural=True):
    return XRef(name, target or name, _no_join, plural)


VM_STATUS = {"Unassigned": -1, "Down": 0, "Up": 1, "PoweringUp": 2, "Paused": 4, "MigratingFrom": 5,
             "MigratingTo": 6, "Unknown": 7, "NotResponding": 8, "WaitForLaunch": 9,
             "RebootInProgress": 10, "SavingState": 11, "RestoringState": 12, "Suspended": 13,
             "ImageIllegal": 14, "ImageLocked": 15, "PoweringDown": 16}
HOST_STATUS = {"Unassigned": 0, "Down": 1, "Maintenance": 2, "Up": 3, "NonResponsive": 4, "Error": 5,
               "Installing": 6, "InstallFailed": 7, "Reboot": 8, "PreparingForMaintenance": 9,
               "NonOperational": 10, "PendingApproval": 11, "Initializing": 12, "Connecting": 13,
               "InstallingOS": 14, "Kdumping": 15}
ARCH = {"undefined": 0, "x86_64": 1, "ppc64": 2, "ppc": 3, "x86": 4, "ppc64le": 5, "ppcle": 6, "s390x": 7}
BIOS = {"I440FX_SEA_BIOS": 1, "Q35_SEA_BIOS": 2, "Q35_OVMF": 3, "Q35_SECURE_BOOT": 4}
EXTERNAL = ["Ok", "Info", "Warning", "Error", "Failure"]
OS_NAMES = {"other": 0, "windows_xp": 1, "other_linux": 5, "windows_7": 11, "windows_7x64": 12,
            "rhel_6": 18, "rhel_6x64": 19, "rhel_7x64": 24, "rhel_8x64": 30, "windows_2019x64": 31,
            "rhel_9x64": 34, "windows_11": 36, "windows_2022": 37, "rhel_10x64": 39, "ubuntu_18_04": 1257,
            "debian_9": 1301}
SEVERITY = {"NORMAL": 0, "WARNING": 1, "ERROR": 2, "ALERT": 10}


def OS():
    return E("os", OS_NAMES, case_sensitive_values=True, free_text=False)


VM = ObjectDef("Vm", None, (
    S("name", "vm_name"), S("comment", "free_text_comment"), S("description"), E("status", VM_STATUS),
    S("ip", "vm_ip"), S("fqdn", "vm_fqdn"), S("address", "vm_host"), S("on_host", "run_on_vds_name"),
    Field("uptime", Kind.TIMESPAN, "elapsed_time"), OS(), Field("creationdate", Kind.DATE, "creation_date"),
    I("cpu_usage"), I("mem_usage"), I("network_usage"), I("migration_progress_percent"), I("memory"),
    I("guaranteed_memory"), I("vcpus"), Field("apps", Kind.SUBSTRING, "app_list", free_text=False),
    S("cluster"), S("datacenter"), S("pool"), S("loggedinuser"), TAG(),
    E("type", ["desktop", "server", "highperformance"]), Field("quota", Kind.NULLABLE_STRING),
    U("id"), E("architecture", ARCH), S("custom_emulated_machine"), S("custom_cpu_type"),
    S("compatibility_level"), Field("custom_compatibility_level", Kind.RAW), U("created_by_user_id"),
    B("next_run_config_exists"), B("has_illegal_images"), E("bios_type", BIOS), S("k8s_namespace"),
), xrefs=(X("Host"), X("Template"), X("Event"), X("User"), X("Storage"), X("Vnic", plural=False)),
    relations=(TAG_RELATION,))

HOST = ObjectDef("Host", None, (
    S("name"), S("comment"), E("status", HOST_STATUS), E("external_status", EXTERNAL), S("cluster"),
    S("datacenter"), S("address"), I("cpu_usage"), I("mem_usage"), I("network_usage"),
    Field("load", Kind.DECIMAL), S("version"), I("cpus"), I("memory"), Field("cpu_speed", Kind.DECIMAL),
    S("cpu_model"), I("active_vms"), I("migrating_vms", ops=STRING_OPS), I("committed_mem"), TAG(),
    E("type", {"RHEL": 0, "RHEVH": 2}), E("architecture", ARCH), B("update_available"),
    I("ha_score", ops=STRING_OPS), I("spm_id", ops=STRING_OPS), U("hw_id"), U("id", hidden=True),
), xrefs=(X("Vm"), X("Template"), X("Event"), X("User"), X("Storage"), X("Nic", plural=False)),
    relations=(TAG_RELATION,))


def template_fields():
    return (
        S("name"), S("comment"), S("description"), OS(),
        Field("creationdate", Kind.DATE, operators=DATE_OPS, symbolic_dates=True), I("childcount"), I("mem"),
        E("status", ["OK", "Locked", "Illegal"]), Field("sealed", Kind.RAW), S("cluster"), S("datacenter"),
        Field("quota", Kind.NULLABLE_STRING), E("architecture", ARCH), S("version_name"), TAG(),
        U("_vmt_id", hidden=True),
    )


TEMPLATE_XREFS = (X("Vm"), X("Host"), X("Event"), X("User"), X("Storage"), X("Vnic", plural=False))
TEMPLATE = ObjectDef("Template", None, template_fields(), xrefs=TEMPLATE_XREFS, relations=(TAG_RELATION,))
INSTANCETYPE = ObjectDef("InstanceType", None, template_fields(), xrefs=TEMPLATE_XREFS,
                         relations=(TAG_RELATION,))
IMAGETYPE = ObjectDef("ImageType", None, template_fields(), xrefs=TEMPLATE_XREFS, relations=(TAG_RELATION,))

USER = ObjectDef("User", None, (
    S("name"), S("lastname", "surname"), S("usrname", "username", domain_column="domain"),
    S("login", "username"), S("user_and_domain"), S("directory", "domain"), S("department"), TAG(),
    S("pool", "vm_pool_name"), Field("type", Kind.RAW, "user_group"),
), xrefs=(X("Vm"), X("Host"), X("Template"), X("Event")), relations=(TAG_RELATION,))

GROUP = ObjectDef("Group", None, (S("name"), S("grpname", "name")))

POOL = ObjectDef("Pool", None, (
    S("name"), S("description"), S("comment"), E("type", ["AUTOMATIC", "MANUAL"]), S("cluster"),
    S("datacenter"), E("architecture", ARCH), I("assigned_vm_count", ops=STRING_OPS),
    I("running_vm_count", ops=STRING_OPS),
))

EVENT = ObjectDef("Event", None, (
    I("type", ops=STRING_OPS), E("severity", SEVERITY, operators=NUMERIC_OPS), S("message"),
    Field("time", Kind.DATE, operators=DATE_OPS, symbolic_dates=True), S("usrname"),
    S("event_host"), S("event_vm"), S("event_template"), S("event_storage"), S("event_datacenter"),
    S("event_volume"), S("correlation_id"), S("origin"), I("custom_event_id", ops=STRING_OPS),
    B("deleted"), S("_event_vm_id", hidden=True), S("_event_template_id", hidden=True),
    S("_event_storage_id", hidden=True), S("_event_host_id", hidden=True),
    S("_event_datacenter_id", hidden=True), S("_event_quota_id", hidden=True),
    S("usrid", hidden=True, operators=()),
), xrefs=(X("Vm"), X("Host"), X("Template"), X("User"), X("Cluster"), X("Volume"), X("Quota")))

CLUSTER = ObjectDef("Cluster", None, (
    S("name"), S("description"), S("comment"), E("architecture", ARCH),
    Field("compatibility_level", Kind.RAW), S("cpu_type"),
), xrefs=(X("DataCenter", plural=False), X("Storage"), X("Cluster_Network", plural=False)))

DATACENTER = ObjectDef("DataCenter", None, (
    S("name"), S("description"), S("comment"), B("local"),
    E("status", ["Uninitialized", "Up", "Maintenance", "NotOperational", "NonResponsive", "Contend"]),
    S("compatibility_version"),
), plural=False, xrefs=(X("Cluster"), X("Storage"), X("Network")))

STORAGE_TYPES = {"UNKNOWN": 0, "NFS": 1, "FCP": 2, "ISCSI": 3, "LOCALFS": 4, "POSIXFS": 6, "GLUSTERFS": 7,
                 "GLANCE": 8, "CINDER": 9, "MANAGED_BLOCK_STORAGE": 10, "UNMANAGED": 11}
STORAGE = ObjectDef("Storage", None, (
    S("name"), E("status", ["Unknown", "Uninitialized", "Unattached", "Active", "Inactive", "Locked",
                            "Maintenance", "PreparingForMaintenance", "Detaching", "Activating"]),
    E("shared_status", ["Unattached", "Active", "Inactive", "Mixed"]), E("external_status", EXTERNAL),
    Field("datacenter", Kind.LIST), E("type", STORAGE_TYPES), I("free_size"), I("used_size"),
    I("total_size"), I("committed"), S("comment"), S("description"), B("wipe_after_delete"),
    B("discard_after_delete"), B("backup"),
), xrefs=(X("Host"), X("Cluster")))

DISK = ObjectDef("Disk", None, (
    S("alias", "disk_alias"), S("name", "disk_alias"), S("description"),
    L("provisioned_size", "size"), L("size"), L("actual_size"), Field("creation_date", Kind.DATE), Field("last_modified", Kind.DATE),
    B("shareable"), B("wipe_after_delete"), E("status", {"Unassigned": 0, "OK": 1, "LOCKED": 2, "ILLEGAL": 4}),
    E("disk_type", ["IMAGE", "LUN", "CINDER", "MANAGED_BLOCK_STORAGE", "KUBERNETES"]),
    E("disk_content_type", ["DATA", "OVF_STORE", "MEMORY_DUMP_VOLUME", "MEMORY_METADATA_VOLUME", "ISO",
                            "HOSTED_ENGINE", "HOSTED_ENGINE_SANLOCK", "HOSTED_ENGINE_METADATA",
                            "HOSTED_ENGINE_CONFIGURATION", "BACKUP_SCRATCH"]),
    E("allocation_policy", ["Unassigned", "Preallocated", "Sparse"]), I("number_of_vms"),
    Field("vm_names", Kind.LIST), S("quota"), U("id"),
), xrefs=(X("DataCenter", plural=False), X("Storage")))

VOLUME = ObjectDef("Volume", None, (
    S("name"), E("type", ["DISTRIBUTE", "REPLICATE", "DISTRIBUTED_REPLICATE", "STRIPE",
                          "DISTRIBUTED_STRIPE", "DISPERSE", "DISTRIBUTED_DISPERSE"]),
    E("transport_type", ["TCP", "RDMA"]), E("status", ["UP", "DOWN"]), I("replica_count"), I("stripe_count"),
), xrefs=(X("Cluster"),))

QUOTA = ObjectDef("Quota", None, (
    S("name"), S("storagepoolname"), S("description"), I("thresholdclusterpercentage"),
    I("thresholdstoragepercentage"), I("graceclusterpercentage"), I("gracestoragepercentage"),
    E("enforcementtype", ["DISABLED", "SOFT_ENFORCEMENT", "HARD_ENFORCEMENT"]),
))

NETWORK = ObjectDef("Network", None, (
    S("name"), S("description"), S("comment"), I("vlanid"), B("stp"), B("vmnetwork"), I("mtu"),
    S("datacenter"), S("label"), S("provider_name"), S("qos_name"),
), xrefs=(X("Cluster_Network", plural=False), X("Host_Network", plural=False), X("Provider")))

PROVIDER = ObjectDef("Provider", None, (
    S("name"), E("type", ["OPENSTACK_NETWORK", "FOREMAN", "OPENSTACK_IMAGE", "OPENSTACK_VOLUME", "VMWARE",
                          "EXTERNAL_NETWORK", "KVM", "XEN", "KUBEVIRT"]), S("description"), S("url"),
))
SESSION = ObjectDef("Session", None, (U("user_id"), S("user_name"), S("authz_name"), S("source_ip"), I("id")))
JOB = ObjectDef("Job", None, (U("correlation_id"),))
VNICPROFILE = ObjectDef("VnicProfile", None, (
    S("name"), S("description"), B("port_mirroring"), B("passthrough"), S("network_name"),
    S("compatibility_version"), S("datacenter"), S("qos_name"), S("network_filter"), S("failover"),
))

# Internal objects, reachable only as cross-reference targets.
VNIC = ObjectDef("Vnic", None, (S("network_name"), S("mac")), searchable=False)
NIC = ObjectDef("Nic", None, (S("network_name"), S("mac")), searchable=False)
CLUSTER_NETWORK = ObjectDef("Cluster_Network", None, (S("network_name"), S("cluster_name")),
                            searchable=False)
HOST_NETWORK = ObjectDef("Host_Network", None, (S("network_name"), S("host_name")), searchable=False)

OVIRT = Registry([VM, HOST, TEMPLATE, INSTANCETYPE, IMAGETYPE, USER, GROUP, POOL, EVENT, CLUSTER, DATACENTER,
                  STORAGE, DISK, VOLUME, QUOTA, NETWORK, PROVIDER, SESSION, JOB, VNICPROFILE,
                  VNIC, NIC, CLUSTER_NETWORK, HOST_NETWORK])
