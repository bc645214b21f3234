"""The XML shape: parsing libvirt's own (live) XML, and our metadata stamp."""
from __future__ import annotations

from hypervisor_node.domxml.model import VDI_NS, Domain, Graphics, Owner

# Trimmed from a running QEMU domain's XMLDesc: aliases, addresses and defaults libvirt adds.
LIVE_XML = f"""<domain type='qemu' id='7'>
  <name>desk-1</name>
  <uuid>0b8c4b8e-6f0e-4c3b-8a53-1f0b2f6f0a11</uuid>
  <metadata>
    <vdi:desktop xmlns:vdi="{VDI_NS}">
      <vdi:owner manager="vdi" desktop="desk-id-1"/>
    </vdi:desktop>
  </metadata>
  <memory unit='GiB'>1</memory>
  <currentMemory unit='MiB'>512</currentMemory>
  <vcpu placement='static'>2</vcpu>
  <resource><partition>/machine</partition></resource>
  <os>
    <type arch='x86_64' machine='pc-q35-7.2'>hvm</type>
    <kernel>/srv/k</kernel>
    <initrd>/srv/i</initrd>
    <cmdline>console=ttyS0</cmdline>
  </os>
  <features><acpi/><apic/></features>
  <clock offset='utc'/>
  <on_poweroff>destroy</on_poweroff>
  <on_reboot>restart</on_reboot>
  <on_crash>destroy</on_crash>
  <devices>
    <emulator>/usr/bin/qemu-system-x86_64</emulator>
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2' cache='none' discard='unmap'/>
      <source file='/srv/desk-1.qcow2' index='1'/>
      <backingStore type='file' index='2'><format type='qcow2'/><source file='/srv/t.qcow2'/></backingStore>
      <target dev='vda' bus='virtio'/>
      <alias name='virtio-disk0'/>
      <address type='pci' domain='0x0000' bus='0x02' slot='0x00' function='0x0'/>
    </disk>
    <controller type='usb' index='0' model='qemu-xhci' ports='15'><alias name='usb'/></controller>
    <channel type='unix'>
      <source mode='bind' path='/var/lib/libvirt/qemu/channel/target/domain-7-desk-1/org.vdi.guest_agent.0'/>
      <target type='virtio' name='org.vdi.guest_agent.0' state='connected'/>
      <alias name='channel1'/>
    </channel>
    <graphics type='spice' port='5901' autoport='yes' listen='127.0.0.1'>
      <listen type='address' address='127.0.0.1'/>
      <image compression='off'/>
    </graphics>
    <graphics type='vnc' port='-1' autoport='yes'>
      <listen type='address' address='0.0.0.0'/>
    </graphics>
    <video>
      <model type='qxl' ram='65536' vram='65536' vgamem='16384' heads='2' primary='yes'/>
      <alias name='video0'/>
    </video>
    <memballoon model='virtio'><stats period='5'/><alias name='balloon0'/></memballoon>
  </devices>
  <seclabel type='dynamic' model='dac' relabel='yes'/>
</domain>
"""


def test_live_xml_parses_into_the_model():
    domain = Domain.from_xml(LIVE_XML)
    assert (domain.type, domain.domain_id, domain.name, domain.vcpus) == ("qemu", 7, "desk-1", 2)
    assert (domain.memory_kib, domain.current_memory_kib) == (1024 * 1024, 512 * 1024)
    assert domain.owner == Owner(manager_id="vdi", desktop_id="desk-id-1")
    assert domain.os.machine == "pc-q35-7.2" and domain.os.kernel == "/srv/k"
    assert domain.devices.emulator == "/usr/bin/qemu-system-x86_64"
    assert [(d.source_file, d.driver_type, d.driver_cache) for d in domain.devices.disks] == \
        [("/srv/desk-1.qcow2", "qcow2", "none")]
    spice = domain.devices.graphics_of_type("spice")
    vnc = domain.devices.graphics_of_type("vnc")
    assert (spice.port, spice.listen) == (5901, "127.0.0.1")
    assert (vnc.port, vnc.listen) == (None, "0.0.0.0")  # -1 means "not assigned yet"
    agent = domain.devices.channel_named("org.vdi.guest_agent.0")
    assert agent.source_path.endswith("/domain-7-desk-1/org.vdi.guest_agent.0")
    assert domain.devices.videos[0].heads == 2
    assert domain.devices.memballoon.stats_period_s == 5


def test_a_domain_without_our_stamp_has_no_owner():
    foreign = LIVE_XML.replace("<vdi:owner", "<vdi:somethingelse").replace(VDI_NS, "urn:other")
    assert Domain.from_xml(foreign).owner is None


def test_owner_reads_what_libvirt_metadata_returns():
    # libvirt's metadata() drops the namespace prefix of the element it returns
    text = '<desktop>\n  <owner manager="m-1" desktop="d-1"/>\n</desktop>'
    assert Owner.from_metadata_xml(text) == Owner("m-1", "d-1")
    assert Owner.from_metadata_xml("<other/>") is None


def test_graphics_serialises_only_what_is_set():
    xml_el = Graphics(type="spice", listen=None, autoport=True).to_element()
    assert xml_el.attrib == {"type": "spice", "autoport": "yes"}
    assert list(xml_el) == []
