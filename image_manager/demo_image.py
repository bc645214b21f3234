"""The demo desktop: a tiny, real, bootable guest built only from Debian packages, cached outside git.

What it is:
- a Debian cloud kernel (`linux-image-<version>-cloud-amd64`, downloaded with `apt-get download`);
- a generic initramfs (busybox-static + the virtio modules) whose only job is to mount /dev/vda and
  hand over to the disk's /sbin/init, so every behaviour of the desktop travels with the TEMPLATE DISK;
- a template disk (ext4, populated without loop mounts, converted to qcow2) holding busybox, the
  desktop's init, a guest agent, the installed-applications list and a random template id.

What the guest does at boot (markers on the serial console, one per line):
    VDI-BOOT template=<id> hostname=<name> boot=<n>      the template this disk descends from
    VDI-USERFILE <path> exists: <first line>             once per file under /home/user ...
    VDI-USERFILE none                                    ... or this when there are none
    VDI-AGENT ready port=/dev/vportNpM                   the guest agent answers on its channel
    VDI-READY                                            boot finished
    VDI-SCREEN login prompt on tty1                      the screen shows the name and a login prompt
    VDI-NET addresses=<a,b,...>                          DHCP (or link-local) done
The screen (tty1 on the VGA text console; the cloud kernel has no framebuffer driver for QEMU's
cards) is white on blue with the desktop's name and a getty login prompt: "user", no password.
The hostname is `vdi.hostname=` from the kernel command line, else /etc/hostname of the disk.
An ACPI power-button press (libvirt's shutdown()) powers the guest off cleanly (VDI-SHUTDOWN poweroff).

Two variants (VARIANTS; the cache key includes the variant):
- "console" (the default): the cloud kernel and the VGA text console described above. Every real-guest test boots it.
- "planner": a planner desktop (docs/planner.md, "Guest protocol"). Debian's generic kernel
  (`linux-image-<version>-amd64`; vesafb is built in, ext4 and its helpers are loaded by the initramfs) booted with
  `vga=0x318`, so /dev/fb0 is 1024x768 at 24 bits; /opt/planner holds vdi-planner (static C, compiled with the
  host's gcc at build time: it draws on the framebuffer and reads CLOCK_MONOTONIC), the applications
  (/opt/planner/apps/NAME, run by name only) and their data. At boot the screen becomes a framebuffer desktop with
  the watermark region and a keep-alive block (VDI-PLANNER desktop WxH bpp=N font=console|pattern marks_us=N). It
  boots in 1.4-1.9x the console variant's time from a 2.6x larger kernel download (bench/demo_boot.py), which is
  why the console variant stays the default and only planner desktops use this one.

The guest agent speaks one line per request on the virtio-serial port named
`org.vdi.guest_agent.0` (see AGENT_PORT_NAME) and answers one line:
    ping -> pong                      hostname -> <name>            uptime -> <seconds>
    apps -> App 1,App 2,...           sync -> ok                    help -> the command list
    ip -> 10.0.2.15,fec0::...         (every address but loopback's, IPv4 first; empty before DHCP)
    user -> user,...                  (who is logged in on the console, from utmp; empty: nobody)
    write PATH TEXT -> ok <bytes>     (writes TEXT and a newline into PATH, then syncs)
    read PATH -> <content>            (newlines shown as the two characters \\n)
    run OP -> OP <milliseconds>       (OP: cpu, disk, compress, memory; a bounded amount of work)
    sleep SECONDS -> ok               (answers after SECONDS, 0-600: a slow command on purpose)
    planner-apps -> APP:OP,OP APP:OP  (the planner applications and their operations; ERR without planner tools)
    planner-op APP OP SEQ CODE -> ok CODE SEQ MICROSECONDS | FAIL CODE SEQ REASON
                                      (draws the watermark start marks, runs /opt/planner/apps/APP OP, draws the
                                      end mark; SEQ 1-999, CODE 0-1023; docs/planner.md "Guest protocol")
    reboot -> ok / poweroff -> ok     (then the guest syncs and reboots or powers off)
    anything else -> ERR <what to do instead>
A request `@ID COMMAND` (ID: 1-64 letters, digits, '-' or '_') is answered `@ID REPLY`, so a client can
tell its reply from a late one to an earlier request; hypervisor_node.guest_agent is that client.

`ensure_demo_image()` builds all this once per recipe (the cache key is a hash of everything that
shapes the result) and returns the cached files on later calls; `DemoImage.publish()` copies them to
shared storage, where QEMU (running as its own user) can read them.
"""
from __future__ import annotations

import argparse
import contextlib
import fcntl
import gzip
import hashlib
import json
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from core.errors import Invalid, VdiError
from image_manager import qemu_img
from image_manager.errors import ImageToolMissing

# Bump when the recipe changes in a way the hash below cannot see (e.g. a different build tool flag).
RECIPE_VERSION = "2"

KERNEL_META_PACKAGE = "linux-image-cloud-amd64"
BUSYBOX_PACKAGE = "busybox-static"
AGENT_PORT_NAME = "org.vdi.guest_agent.0"
DISK_SIZE_MIB = 64
USER_DATA_DIR = "/home/user"

DEFAULT_APPS: tuple[str, ...] = (
    "LibreOffice 7.4",
    "Firefox ESR 115",
    "Thunderbird 115",
    "GIMP 2.10",
    "Office Viewer 1.2",
)

# The cloud kernel builds virtio as modules; insmod has no dependency resolution, so the order matters
# (a module before its dependencies fails with "unknown symbol"). evdev + button let acpid see the
# ACPI power button, virtio_balloon gives libvirt the guest's memory figures, virtio_net (after the
# failover modules it needs) the desktop's network interface. The screen needs no module: the cloud
# kernel has the VGA text console built in (and no DRM, vesafb or simplefb: no framebuffer).
KERNEL_MODULES: tuple[str, ...] = (
    "virtio_ring",
    "virtio",
    "virtio_pci_modern_dev",
    "virtio_pci_legacy_dev",
    "virtio_pci",
    "virtio_blk",
    "virtio_console",
    "virtio_balloon",
    "evdev",
    "button",
    "failover",
    "net_failover",
    "virtio_net",
)

# The planner variant's kernel is Debian's generic one: it has vesafb built in (the cloud kernel has no framebuffer
# driver at all), but builds ext4 as a module, so the initramfs loads it (and what it needs) before the mount.
PLANNER_KERNEL_META_PACKAGE = "linux-image-amd64"
PLANNER_KERNEL_MODULES: tuple[str, ...] = ("crc16", "mbcache", "jbd2", "crc32c_generic", "ext4") + KERNEL_MODULES
# vga=0x318: VESA mode 0x118 (1024x768, 24 bits under QEMU's VGA BIOS) set at boot for vesafb; QEMU's direct
# kernel boot passes it to the kernel's real-mode setup. consoleblank=0: the screen never blanks.
PLANNER_CMDLINE: tuple[str, ...] = ("vga=0x318", "consoleblank=0")
PLANNER_DIR = "/opt/planner"
PLANNER_SOURCES = Path(__file__).with_name("planner_guest")


@dataclass(frozen=True)
class Variant:
    """What distinguishes one kind of demo desktop from another."""

    name: str
    kernel_meta_package: str
    kernel_package: str  # regex: the versioned package the meta package depends on
    modules: tuple[str, ...]
    cmdline: tuple[str, ...]
    planner: bool  # carries /opt/planner (vdi-planner, the applications, their data)


# console: the cloud kernel, the VGA text console; every real-guest test boots it.
# planner: the generic kernel with a 1024x768 framebuffer and the planner's guest side (docs/planner.md).
VARIANTS: dict[str, Variant] = {
    "console": Variant("console", KERNEL_META_PACKAGE, r"linux-image-[0-9][^\s]*-cloud-amd64", KERNEL_MODULES, (),
                       planner=False),
    "planner": Variant("planner", PLANNER_KERNEL_META_PACKAGE, r"linux-image-[0-9][0-9.]*-[0-9]+-amd64",
                       PLANNER_KERNEL_MODULES, PLANNER_CMDLINE, planner=True),
}
DEFAULT_VARIANT = "console"

# Serial-console markers (see the module docstring); tests and the node read the log for these.
MARK_BOOT = "VDI-BOOT"
MARK_USERFILE = "VDI-USERFILE"
MARK_AGENT_READY = "VDI-AGENT ready"
MARK_READY = "VDI-READY"
MARK_SHUTDOWN = "VDI-SHUTDOWN"
MARK_PANIC = "VDI-PANIC"

# ---- what goes into the guest ------------------------------------------------------------------

INITRAMFS_INIT = r"""#!/bin/busybox sh
# Find the desktop's disk and hand over to ITS init: the template carries the behaviour, not this.
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
for module in @MODULES@; do
    insmod "/lib/modules/$module.ko" || echo "VDI-INITRAMFS cannot load module $module"
done
tries=0
while [ ! -b /dev/vda ] && [ "$tries" -lt 200 ]; do sleep 0.05; tries=$((tries + 1)); done
if ! mount -t ext4 -o rw /dev/vda /newroot; then
    echo "VDI-PANIC cannot mount /dev/vda as ext4 (is the desktop disk attached as virtio?)"
    sleep 1; poweroff -f
fi
if [ ! -x /newroot/sbin/init ]; then
    echo "VDI-PANIC /dev/vda has no executable /sbin/init: not a VDI demo template"
    sleep 1; poweroff -f
fi
mount --move /dev /newroot/dev
mount --move /sys /newroot/sys
mount --move /proc /newroot/proc
exec switch_root /newroot /sbin/init
"""

DISK_INIT = r"""#!/bin/busybox sh
# The desktop's init (PID 1), carried by the template disk.
mount -t tmpfs -o mode=0755 tmpfs /run
mkdir -p /run/bin && /bin/busybox --install -s /run/bin
export PATH=/run/bin
mount -t tmpfs tmpfs /tmp
: > /run/utmp  # /var/run is /run: the console's logins are recorded here (who, the agent's user command)
name=$(cat /etc/hostname 2>/dev/null)
for word in $(cat /proc/cmdline); do
    case "$word" in vdi.hostname=?*) name=${word#vdi.hostname=} ;; esac
done
hostname "${name:-vdi-desktop}"
boots=$(cat /var/lib/vdi/boot-count 2>/dev/null)
boots=$(( ${boots:-0} + 1 ))
echo "$boots" > /var/lib/vdi/boot-count
sync
echo "VDI-BOOT template=$(cat /template-id) hostname=$(hostname) boot=$boots kernel=$(uname -r)"
found=0
for file in @USERDIR@/*; do
    [ -f "$file" ] || continue
    found=1
    echo "VDI-USERFILE $file exists: $(head -n 1 "$file" | cut -c1-80)"
done
[ "$found" = 1 ] || echo "VDI-USERFILE none"
acpid -c /etc/acpi -l /run/acpid.log
/usr/sbin/vdi-network &
if [ -x /opt/planner/bin/vdi-planner ]; then
    # the planner desktop: the screen becomes a framebuffer desktop with watermarks (docs/planner.md)
    if [ -e /dev/fb0 ]; then
        /opt/planner/bin/vdi-planner desktop "$(hostname)" > /dev/console 2>&1
        /opt/planner/bin/vdi-planner keepalive > /dev/null 2>&1 &
    else
        echo "VDI-PLANNER no framebuffer: boot with vga=0x318 on a BIOS (SeaBIOS) machine" > /dev/console
    fi
fi
( while true; do /usr/sbin/vdi-agent; echo "VDI-AGENT exited with $?; restarting"; sleep 1; done ) &
/usr/sbin/vdi-screen &
echo "VDI-READY"
while true; do wait; sleep 60; done
"""

SHUTDOWN_SCRIPT = r"""#!/bin/busybox sh
# vdi-shutdown poweroff|reboot: flush the disk, remount it read-only and stop the machine.
export PATH=/run/bin
action=${1:-poweroff}
echo "VDI-SHUTDOWN $action" > /dev/console
sync
mount -o remount,ro / 2>/dev/null
sync
if [ "$action" = reboot ]; then reboot -f; else poweroff -f; fi
"""

# The screen (tty1, the VGA text console): white on blue over the whole screen, the desktop's name, then a
# login prompt (busybox getty + login; "user" has no password). Respawned after every logout.
SCREEN_SCRIPT = r"""#!/bin/busybox sh
export PATH=/run/bin
while true; do
    {
        printf '\033[0m\033[1;37;44m\033[2J\033[H\n'
        printf '   +------------------------------------------------------------------------+\n'
        printf '   |  VDI Demo Desktop                                                      |\n'
        printf '   |  Desktop name: %-55s |\n' "$(hostname)"
        printf '   +------------------------------------------------------------------------+\n\n'
        printf '   Log in as "user" (no password).\n\n'
    } > /dev/tty1
    echo "VDI-SCREEN login prompt on tty1" > /dev/console
    setsid getty -i -l /run/bin/login 38400 tty1 linux
    sleep 1
done
"""

# The network: DHCP on every interface (the libvirt network's dnsmasq, or QEMU's user-mode server); without
# an answer a link-local address from the MAC (RFC 3927's range, as zeroconf picks one).
NETWORK_SCRIPT = r"""#!/bin/busybox sh
export PATH=/run/bin
ip link set lo up
for dir in /sys/class/net/*; do
    dev=${dir##*/}
    [ "$dev" = lo ] && continue
    ip link set "$dev" up
    if ! udhcpc -i "$dev" -n -t 5 -T 2 -x "hostname:$(hostname)" -s /usr/sbin/vdi-dhcp-event >/dev/null 2>&1
    then
        mac=$(cat "$dir/address")
        low=$(( 0x$(echo "$mac" | cut -d: -f5) % 254 + 1 ))
        ip addr add "169.254.$low.$(( 0x$(echo "$mac" | cut -d: -f6) ))/16" dev "$dev"
    fi
done
echo "VDI-NET addresses=$(/usr/sbin/vdi-addresses)" > /dev/console
"""

# udhcpc's event script: it sets the address it was given and the default route.
DHCP_EVENT_SCRIPT = r"""#!/bin/busybox sh
export PATH=/run/bin
case "$1" in
    deconfig) ip addr flush dev "$interface"; ip link set "$interface" up ;;
    bound|renew)
        ip addr flush dev "$interface"
        ip addr add "$ip/${mask:-24}" dev "$interface"
        [ -n "$router" ] && ip route replace default via "${router%% *}" dev "$interface"
        ;;
esac
exit 0
"""

# The addresses of every interface but lo, comma-separated, IPv4 first (the agent's ip command).
ADDRESSES_SCRIPT = r"""#!/bin/busybox sh
export PATH=/run/bin
for family in inet inet6; do
    for dir in /sys/class/net/*; do
        dev=${dir##*/}
        [ "$dev" = lo ] && continue
        ip addr show dev "$dev" | awk -v family="$family" '$1 == family { sub("/.*", "", $2); print $2 }'
    done
done | tr '\n' ',' | sed 's/,$//'
echo
"""

# The static busybox cannot look names up through NSS (id -un fails): login's $USER names the user.
PROFILE = r"""export PATH=/run/bin
export PS1="$USER@\h:\w\$ "
echo "Welcome to $(hostname), $USER."
"""

POWER_BUTTON_SCRIPT = """#!/bin/busybox sh
exec /usr/sbin/vdi-shutdown poweroff
"""

# The guest agent's shell functions; answer_line is its whole protocol (unit-tested with the host's busybox).
AGENT_FUNCTIONS = r"""
find_port() {
    for name_file in /sys/class/virtio-ports/*/name; do
        [ -r "$name_file" ] || continue
        if [ "$(cat "$name_file")" = "@PORTNAME@" ]; then
            dir=${name_file%/name}
            echo "/dev/${dir##*/}"
            return 0
        fi
    done
    return 1
}
now_ms() { awk '{ printf "%d", $1 * 1000 }' /proc/uptime; }

run_op() {
    start=$(now_ms)
    case "$1" in
        cpu) dd if=/dev/zero bs=64k count=128 2>/dev/null | md5sum > /dev/null ;;
        disk) dd if=/dev/zero of=/var/tmp/vdi-run-disk bs=64k count=32 conv=fsync 2>/dev/null
              cat /var/tmp/vdi-run-disk > /dev/null; rm -f /var/tmp/vdi-run-disk; sync ;;
        compress) gzip -c /bin/busybox > /dev/null ;;
        memory) dd if=/dev/zero of=/run/vdi-run-memory bs=64k count=256 2>/dev/null
                rm -f /run/vdi-run-memory ;;
        *) echo "ERR unknown operation '$1': use one of cpu, disk, compress, memory"; return ;;
    esac
    echo "$1 $(( $(now_ms) - start ))"
}

# planner-apps / planner-op: the planner's guest side (docs/planner.md, "Guest protocol"). Applications are
# the executables in /opt/planner/apps, run by NAME only; vdi-planner draws the watermarks and times the run.
planner_name_ok() {
    case "$1" in [a-z]*) ;; *) return 1 ;; esac
    case "$1" in *[!a-z0-9_-]*) return 1 ;; esac
    [ "${#1}" -le 32 ]
}
planner_number_ok() {  # VALUE MIN MAX: a whole number without leading zeros in MIN..MAX
    case "$1" in ""|*[!0-9]*|0?*) return 1 ;; esac
    [ "${#1}" -le 4 ] && [ "$1" -ge "$2" ] && [ "$1" -le "$3" ]
}
planner_ops() { "/opt/planner/apps/$1" ops 2>/dev/null | tr -s ' \n' '  ' | sed 's/^ //; s/ $//'; }
planner_apps() {
    if [ ! -x /opt/planner/bin/vdi-planner ]; then
        echo "ERR this desktop has no planner tools: use the planner variant of the demo image"; return
    fi
    out=
    for app in /opt/planner/apps/*; do
        name=${app##*/}
        [ -f "$app" ] && [ -x "$app" ] && planner_name_ok "$name" || continue
        out="$out $name:$(planner_ops "$name" | tr ' ' ',')"
    done
    echo "${out# }"
}
planner_op() {
    usage="ERR usage: planner-op APP OP SEQ CODE (APP and OP: 1-32 of a-z 0-9 _ - starting with a letter;"
    usage="$usage SEQ: 1-999; CODE: 0-1023)"
    set -f; set -- $1; set +f
    if [ $# -ne 4 ] || ! planner_name_ok "$1" || ! planner_name_ok "$2" || ! planner_number_ok "$3" 1 999 \
            || ! planner_number_ok "$4" 0 1023; then
        echo "$usage"; return
    fi
    if [ ! -x /opt/planner/bin/vdi-planner ]; then
        echo "ERR this desktop has no planner tools: use the planner variant of the demo image"; return
    fi
    if [ ! -f "/opt/planner/apps/$1" ] || [ ! -x "/opt/planner/apps/$1" ]; then
        echo "ERR no application '$1' on this desktop: send planner-apps for the list"; return
    fi
    ops=$(planner_ops "$1")
    case " $ops " in
        *" $2 "*) ;;
        *) echo "ERR application '$1' has no operation '$2': it has $ops"; return ;;
    esac
    /opt/planner/bin/vdi-planner run "$4" "$3" "/opt/planner/apps/$1" "$2"
}

handle() {
    line=$1
    command=${line%% *}
    rest=
    [ "$command" != "$line" ] && rest=${line#* }
    case "$command" in
        ping) echo pong ;;
        hostname) hostname ;;
        uptime) cut -d. -f1 /proc/uptime ;;
        apps) grep -v '^$' /etc/vdi/apps | tr '\n' ',' | sed 's/,$//'; echo ;;
        ip) /usr/sbin/vdi-addresses ;;
        user) who | awk '{ print $1 }' | sort -u | tr '\n' ',' | sed 's/,$//'; echo ;;
        sync) sync; echo ok ;;
        write)
            path=${rest%% *}
            text=
            [ "$path" != "$rest" ] && text=${rest#* }
            case "$path" in
                /*) ;;
                *) echo "ERR usage: write /ABSOLUTE/PATH TEXT"; return ;;
            esac
            mkdir -p "$(dirname "$path")" && printf '%s\n' "$text" > "$path" && sync \
                && echo "ok $(wc -c < "$path")" || echo "ERR cannot write $path"
            ;;
        read)
            if [ -f "$rest" ]; then
                sed -e ':a' -e 'N' -e '$!ba' -e 's/\n/\\n/g' "$rest"
            else
                echo "ERR no such file: $rest"
            fi
            ;;
        run) run_op "$rest" ;;
        planner-apps) planner_apps ;;
        planner-op) planner_op "$rest" ;;
        sleep)
            case "$rest" in
                ""|*[!0-9]*) echo "ERR usage: sleep SECONDS (a whole number from 0 to 600)"; return ;;
            esac
            if [ "${#rest}" -gt 3 ] || [ "$rest" -gt 600 ]; then
                echo "ERR usage: sleep SECONDS (a whole number from 0 to 600)"; return
            fi
            sleep "$rest"; echo ok
            ;;
        reboot|poweroff)
            echo ok
            ( sleep 1; /usr/sbin/vdi-shutdown "$command" ) < /dev/null > /dev/null 2>&1 &
            ;;
        help) echo "commands: ping hostname uptime apps ip user sync write read run planner-apps planner-op sleep reboot poweroff help; prefix @ID to get @ID before the answer" ;;
        "") echo "ERR empty request: send a command such as ping" ;;
        *) echo "ERR unknown command '$command': send help for the list" ;;
    esac
}

# answer_line REQUEST: print the one reply line. "@ID COMMAND" is answered "@ID ANSWER", so the host can
# tell the reply to ITS request from a late reply to an earlier one; a bare COMMAND gets a bare ANSWER.
answer_line() {
    request=$(printf '%s' "$1" | tr -d '\r')
    tag=
    case "$request" in
        @*) tag=${request%% *}; request=${request#"$tag"}; request=${request# } ;;
    esac
    case "${tag#@}" in
        *[!A-Za-z0-9_-]*) answer="ERR a request id is 1-64 letters, digits, '-' or '_' after @" ;;
        *) if [ "$tag" = @ ] || [ "${#tag}" -gt 65 ]; then
               answer="ERR a request id is 1-64 letters, digits, '-' or '_' after @"
           else
               answer=$(handle "$request" 2>&1 | tr '\n' ' ' | sed 's/ $//')
           fi ;;
    esac
    if [ -n "$tag" ]; then printf '%s %s\n' "$tag" "$answer"; else printf '%s\n' "$answer"; fi
}
"""

AGENT_SCRIPT = r"""#!/bin/busybox sh
# The guest agent: one request line in, one answer line out, on the virtio-serial port @PORTNAME@.
export PATH=/run/bin
""" + AGENT_FUNCTIONS + r"""
port=
tries=0
until port=$(find_port); do
    tries=$((tries + 1))
    if [ "$tries" -ge 50 ]; then
        echo "VDI-AGENT unavailable: no virtio-serial port named @PORTNAME@" > /dev/console
        exec sleep 2147483647
    fi
    sleep 0.2
done
exec 3<>"$port"
echo "VDI-AGENT ready port=$port" > /dev/console
while true; do
    # read returns EOF at once while no host program is connected to the channel: poll until one is.
    while IFS= read -r request <&3; do
        answer_line "$request" >&3
    done
    sleep 0.5
done
"""


class DemoImageBuildFailed(VdiError):
    code = "demo_image_build_failed"
    status = 500
    expected = True
    msg_fmt = "building the demo image failed while {step}: {reason}"


@dataclass(frozen=True)
class DemoImage:
    """The files of one built demo desktop. Paths are absolute."""

    kernel: Path
    initrd: Path
    template: Path
    apps: list[str] = field(default_factory=list)
    template_id: str = ""
    kernel_version: str = ""
    recipe_key: str = ""
    build_seconds: float = 0.0
    variant: str = DEFAULT_VARIANT

    def cmdline(self, hostname: str | None = None) -> str:
        """The kernel command line: the console on the first serial port, kernel messages on the screen too."""
        # tty1 first: the kernel writes to both, /dev/console (the init's markers) is the last one
        parts = ["console=tty1", "console=ttyS0", "quiet", *VARIANTS[self.variant].cmdline]
        if hostname:
            if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9-]{0,62}", hostname):
                raise Invalid(f"hostname {hostname!r} is not a valid host name: use 1-63 letters, digits"
                              " or '-', starting with a letter or digit")
            parts.append(f"vdi.hostname={hostname}")
        return " ".join(parts)

    def publish(self, dest_dir: str | os.PathLike[str]) -> "DemoImage":
        """Copy kernel, initrd and template into `dest_dir` (shared storage) and return the copy.

        The names carry the recipe key, so publishing twice is a no-op and two recipes can share one
        directory. Files become world-readable: QEMU runs as its own user.
        """
        dest = Path(dest_dir).resolve()
        dest.mkdir(parents=True, exist_ok=True)
        copies = {}
        for kind, src in (("kernel", self.kernel), ("initrd", self.initrd), ("template", self.template)):
            target = dest / f"vdi-demo-{self.recipe_key}-{src.name}"
            if not target.exists() or target.stat().st_size != src.stat().st_size:
                partial = target.with_name(f".tmp-{uuid.uuid4().hex}-{target.name}")
                shutil.copyfile(src, partial)
                os.chmod(partial, 0o644)
                os.replace(partial, target)
            copies[kind] = target
        return DemoImage(
            kernel=copies["kernel"],
            initrd=copies["initrd"],
            template=copies["template"],
            apps=list(self.apps),
            template_id=self.template_id,
            kernel_version=self.kernel_version,
            recipe_key=self.recipe_key,
            build_seconds=self.build_seconds,
            variant=self.variant,
        )

    def to_dict(self) -> dict[str, object]:
        data = asdict(self)
        for key in ("kernel", "initrd", "template"):
            data[key] = str(data[key])
        return data


# ---- the build ----------------------------------------------------------------------------------


def default_cache_dir() -> Path:
    """$VDI_CACHE_DIR, else ~/.cache/vdi."""
    configured = os.environ.get("VDI_CACHE_DIR")
    return Path(configured) if configured else Path.home() / ".cache" / "vdi"


def recipe_key(apps: Sequence[str] = DEFAULT_APPS, variant: str = DEFAULT_VARIANT) -> str:
    """A short hash of everything that shapes the image: change any of it and the image is rebuilt."""
    spec = _variant(variant)
    recipe: dict[str, object] = {
        "version": RECIPE_VERSION,
        "packages": [spec.kernel_meta_package, BUSYBOX_PACKAGE],
        "modules": list(spec.modules),
        "disk_mib": DISK_SIZE_MIB,
        "apps": list(apps),
        "scripts": [INITRAMFS_INIT, DISK_INIT, SHUTDOWN_SCRIPT, POWER_BUTTON_SCRIPT, AGENT_SCRIPT,
                    SCREEN_SCRIPT, NETWORK_SCRIPT, DHCP_EVENT_SCRIPT, ADDRESSES_SCRIPT, PROFILE],
    }
    if spec.name != DEFAULT_VARIANT:  # the console image's key stays what it was without variants
        recipe["variant"] = [spec.name, list(spec.cmdline)]
    if spec.planner:
        recipe["planner"] = {name: hashlib.sha256(data).hexdigest() for name, data in _planner_files().items()}
    return hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:12]


def _variant(name: str) -> Variant:
    if name not in VARIANTS:
        raise DemoImageBuildFailed(step="choosing the variant",
                                   reason=f"{name!r} is not a variant: use one of {', '.join(VARIANTS)}")
    return VARIANTS[name]


def ensure_demo_image(cache_dir: str | os.PathLike[str] | None = None,
                      apps: Sequence[str] = DEFAULT_APPS, variant: str = DEFAULT_VARIANT) -> DemoImage:
    """Return the demo desktop for the current recipe, building it first if it is not cached.

    `variant` (see VARIANTS): "console" (the default; cloud kernel, text console) or "planner" (generic kernel,
    1024x768 framebuffer, the planner's guest side; docs/planner.md).

    Builds at most once per recipe: concurrent callers wait on a lock and then reuse the result.
    Needs root-free tools only (apt-get download, dpkg -x, cpio, gzip, mkfs.ext4, qemu-img) and the
    apt package lists. Raises ImageToolMissing when a tool is absent and DemoImageBuildFailed
    (saying which step) when a step fails; a failed build leaves no half-built entry behind.
    """
    _check_apps(apps)
    spec = _variant(variant)
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    base = root / "demo-image"
    base.mkdir(parents=True, exist_ok=True)
    key = recipe_key(apps, variant)
    entry = base / key
    with _locked(base / ".lock"):
        cached = _load_manifest(entry)
        if cached is not None:
            return cached
        return _build(base, entry, key, list(apps), spec)


def _check_apps(apps: Sequence[str]) -> None:
    if not apps:
        raise DemoImageBuildFailed(step="checking the application list", reason="give at least one application")
    for app in apps:
        if not isinstance(app, str) or not app.strip() or "\n" in app or "," in app:
            raise DemoImageBuildFailed(
                step="checking the application list",
                reason=f"{app!r} is not a usable application name (one line, no commas, not empty)",
            )


@contextlib.contextmanager
def _locked(lock_path: Path) -> Iterator[None]:
    with open(lock_path, "a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _load_manifest(entry: Path) -> DemoImage | None:
    manifest = entry / "manifest.json"
    if not manifest.is_file():
        return None
    data = json.loads(manifest.read_text())
    image = DemoImage(
        kernel=entry / data["kernel"],
        initrd=entry / data["initrd"],
        template=entry / data["template"],
        apps=list(data["apps"]),
        template_id=data["template_id"],
        kernel_version=data["kernel_version"],
        recipe_key=data["recipe_key"],
        build_seconds=float(data["build_seconds"]),
        variant=data.get("variant", DEFAULT_VARIANT),
    )
    if not all(path.is_file() for path in (image.kernel, image.initrd, image.template)):
        return None  # someone deleted a file from the cache: build again
    return image


def _build(base: Path, entry: Path, key: str, apps: list[str], spec: Variant) -> DemoImage:
    started = time.monotonic()
    tools = ["apt-get", "apt-cache", "dpkg", "cpio", "gzip", "mkfs.ext4", "debugfs", "qemu-img"]
    for tool in tools + (["gcc"] if spec.planner else []):
        if shutil.which(tool) is None:
            raise ImageToolMissing(
                what=tool,
                reason="install the Debian packages apt, dpkg, cpio, gzip, e2fsprogs and qemu-utils"
                       + (" (and gcc with libc6-dev: the planner variant compiles vdi-planner)" if spec.planner else ""),
            )
    kernel_package = resolve_kernel_package(spec)
    debs = base / "debs"
    debs.mkdir(exist_ok=True)
    kernel_deb = _download(debs, kernel_package)
    busybox_deb = _download(debs, BUSYBOX_PACKAGE)

    work = Path(tempfile.mkdtemp(prefix=".build-", dir=base))
    try:
        extracted = work / "extracted"
        for deb in (kernel_deb, busybox_deb):
            _run(["dpkg", "-x", str(deb), str(extracted)], step=f"unpacking {deb.name}")
        vmlinuz = sorted((extracted / "boot").glob("vmlinuz-*"))
        if not vmlinuz:
            raise DemoImageBuildFailed(step="finding the kernel", reason=f"{kernel_deb.name} has no boot/vmlinuz-*")
        kernel_version = vmlinuz[0].name.removeprefix("vmlinuz-")
        busybox = extracted / "bin" / "busybox"
        if not busybox.is_file():
            raise DemoImageBuildFailed(step="finding busybox", reason=f"{busybox_deb.name} has no bin/busybox")

        output = work / "output"
        output.mkdir()
        shutil.copyfile(vmlinuz[0], output / "vmlinuz")
        _make_initramfs(work / "initramfs", extracted, kernel_version, busybox, output / "initrd.img", spec.modules)
        template_id = f"demo-{key}-{uuid.uuid4().hex[:12]}"
        _make_template(work / "disk", busybox, apps, template_id, output / "template.qcow2", spec)

        build_seconds = round(time.monotonic() - started, 2)
        manifest = {
            "kernel": "vmlinuz",
            "initrd": "initrd.img",
            "template": "template.qcow2",
            "apps": apps,
            "template_id": template_id,
            "kernel_version": kernel_version,
            "kernel_package": kernel_package,
            "recipe_key": key,
            "build_seconds": build_seconds,
            "variant": spec.name,
        }
        (output / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
        for path in output.iterdir():
            os.chmod(path, 0o644)
        if entry.exists():  # a stale, incomplete entry (a file was deleted from it)
            shutil.rmtree(entry)
        os.replace(output, entry)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    image = _load_manifest(entry)
    assert image is not None
    return image


def resolve_kernel_package(spec: Variant = VARIANTS[DEFAULT_VARIANT]) -> str:
    """The versioned kernel package the variant's meta package currently depends on."""
    meta = spec.kernel_meta_package
    result = _run(["apt-cache", "depends", meta], step=f"resolving {meta}")
    match = re.search(rf"Depends:\s*({spec.kernel_package})\s*$", result.stdout, re.MULTILINE)
    if not match:
        raise DemoImageBuildFailed(
            step=f"resolving {meta}",
            reason=f"apt-cache names no dependency like {spec.kernel_package}; run apt-get update",
        )
    return match.group(1)


def _download(debs: Path, package: str) -> Path:
    existing = sorted(debs.glob(f"{package}_*.deb"))
    if existing:
        return existing[-1]
    # apt-get download writes into the current directory; a private one keeps half-downloads apart.
    staging = Path(tempfile.mkdtemp(prefix=".download-", dir=debs))
    try:
        os.chmod(staging, 0o755)  # lets apt's unprivileged download user write there
        _run(["apt-get", "download", package], step=f"downloading {package}", cwd=staging, timeout=600)
        found = sorted(staging.glob(f"{package}_*.deb"))
        if not found:
            raise DemoImageBuildFailed(step=f"downloading {package}", reason="apt-get produced no .deb file")
        target = debs / found[0].name
        os.replace(found[0], target)
        return target
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _make_initramfs(root: Path, extracted: Path, kernel_version: str, busybox: Path, target: Path,
                    modules: Sequence[str]) -> None:
    for sub in ("bin", "dev", "proc", "sys", "newroot", "lib/modules"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    shutil.copy2(busybox, root / "bin" / "busybox")
    modules_root = extracted / "lib" / "modules" / kernel_version
    for module in modules:
        candidates = sorted(modules_root.rglob(f"{module}.ko"))
        if not candidates:
            raise DemoImageBuildFailed(
                step="collecting kernel modules",
                reason=f"module {module}.ko is not in the {kernel_version} kernel package",
            )
        shutil.copyfile(candidates[0], root / "lib" / "modules" / f"{module}.ko")
    _write_script(root / "init", INITRAMFS_INIT.replace("@MODULES@", " ".join(modules)))
    names = sorted(str(path.relative_to(root)) for path in root.rglob("*"))
    listing = ".\n" + "".join(f"{name}\n" for name in names)
    archive = _run(["cpio", "--quiet", "-o", "-H", "newc", "-R", "0:0"], step="packing the initramfs",
                   cwd=root, input_bytes=listing.encode(), binary=True)
    target.write_bytes(gzip.compress(archive.stdout, compresslevel=6, mtime=0))


def _make_template(root: Path, busybox: Path, apps: list[str], template_id: str, target: Path,
                   spec: Variant) -> None:
    for sub in ("bin", "sbin", "usr/sbin", "etc/vdi", "etc/acpi/PWRF", "dev", "proc", "sys", "run", "tmp",
                "var/tmp", "var/lib/vdi", "root", USER_DATA_DIR.lstrip("/")):
        (root / sub).mkdir(parents=True, exist_ok=True)
    os.chmod(root / "tmp", 0o1777)
    shutil.copy2(busybox, root / "bin" / "busybox")
    os.symlink("busybox", root / "bin" / "sh")  # the login shell of /etc/passwd
    os.symlink("../run", root / "var" / "run")  # utmp on the tmpfs: no logins survive a reboot
    _write_script(root / "sbin" / "init", DISK_INIT.replace("@USERDIR@", USER_DATA_DIR))
    _write_script(root / "usr" / "sbin" / "vdi-agent", AGENT_SCRIPT.replace("@PORTNAME@", AGENT_PORT_NAME))
    _write_script(root / "usr" / "sbin" / "vdi-shutdown", SHUTDOWN_SCRIPT)
    _write_script(root / "etc" / "acpi" / "PWRF" / "00000080", POWER_BUTTON_SCRIPT)
    _write_script(root / "usr" / "sbin" / "vdi-screen", SCREEN_SCRIPT)
    _write_script(root / "usr" / "sbin" / "vdi-network", NETWORK_SCRIPT)
    _write_script(root / "usr" / "sbin" / "vdi-dhcp-event", DHCP_EVENT_SCRIPT)
    _write_script(root / "usr" / "sbin" / "vdi-addresses", ADDRESSES_SCRIPT)
    (root / "etc" / "profile").write_text(PROFILE)
    # root is locked; "user" logs in on the console without a password (a demo, reachable only by its console)
    (root / "etc" / "passwd").write_text("root:x:0:0:root:/root:/bin/sh\n"
                                         f"user::1000:1000:Desktop user:{USER_DATA_DIR}:/bin/sh\n")
    (root / "etc" / "shadow").write_text("root:*:0:0:99999:7:::\n")
    os.chmod(root / "etc" / "shadow", 0o600)
    (root / "etc" / "group").write_text("root:x:0:\nuser:x:1000:\n")
    (root / "template-id").write_text(template_id + "\n")
    (root / "etc" / "hostname").write_text("vdi-template\n")
    (root / "etc" / "vdi" / "apps").write_text("".join(f"{app}\n" for app in apps))
    (root / "etc" / "os-release").write_text(
        'NAME="VDI Demo Desktop"\nID=vdi-demo\nPRETTY_NAME="VDI Demo Desktop (busybox)"\n'
        f"VDI_TEMPLATE_ID={template_id}\n"
    )
    if spec.planner:
        _install_planner(root / PLANNER_DIR.lstrip("/"), target.parent)
    raw = target.with_suffix(".raw")
    with open(raw, "wb") as handle:
        handle.truncate(DISK_SIZE_MIB * 1024 * 1024)
    # -d populates the file system from a directory: no loop mount, no root-only step.
    _run(["mkfs.ext4", "-q", "-F", "-L", "vdi-root", "-E", "root_owner=0:0", "-d", str(root), str(raw)],
         step="making the template file system")
    check = _run(["debugfs", "-R", "cat /template-id", str(raw)], step="checking the template file system")
    if check.stdout.strip() != template_id:
        raise DemoImageBuildFailed(
            step="checking the template file system",
            reason=f"/template-id reads {check.stdout.strip()!r}, expected {template_id!r}",
        )
    qemu_img.convert(raw, target, src_fmt="raw", out_fmt="qcow2")
    raw.unlink()


def _planner_files() -> dict[str, bytes]:
    """What /opt/planner is made of, by path under it: the helper's C source, the applications, their data."""
    files = {"src/vdi-planner.c": (PLANNER_SOURCES / "vdi-planner.c").read_bytes()}
    for script in sorted((PLANNER_SOURCES / "apps").glob("*.sh")):
        files[f"apps/{script.stem}"] = script.read_bytes()
    files.update(_planner_data())
    return files


def _planner_data() -> dict[str, bytes]:
    """The applications' inputs, the same on every build: a 120-line document, web-page text, a 1 MiB file that
    compresses like office data (text with a quarter of incompressible bytes)."""
    rng = random.Random(20)
    words = ("quarterly", "report", "figures", "region", "growth", "customer", "desktop", "service", "budget",
             "project", "meeting", "review", "the", "a", "of", "and", "in", "for", "with", "steady", "plan")

    def lines(count: int) -> str:
        return "".join(" ".join(rng.choice(words) for _ in range(rng.randint(6, 14))).capitalize() + ".\n"
                       for _ in range(count))

    document = lines(120)
    archive = bytearray()
    while len(archive) < 1024 * 1024:
        archive += lines(40).encode() + rng.randbytes(1024)
    return {"data/document.txt": document.encode(), "data/page.txt": lines(200).encode(),
            "data/archive.bin": bytes(archive[:1024 * 1024])}


def _install_planner(planner: Path, scratch: Path) -> None:
    """/opt/planner: vdi-planner compiled static (the guest has no C library), the applications, their data."""
    for name, data in _planner_files().items():
        path = planner / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        if name.startswith("apps/"):
            os.chmod(path, 0o755)
    (planner / "bin").mkdir()
    _run(["gcc", "-static", "-O2", "-Wall", "-o", str(planner / "bin" / "vdi-planner"),
          str(planner / "src" / "vdi-planner.c")], step="compiling vdi-planner (needs gcc and libc6-dev)")
    _run(["strip", str(planner / "bin" / "vdi-planner")], step="stripping vdi-planner")


def _write_script(path: Path, text: str) -> None:
    path.write_text(text)
    os.chmod(path, 0o755)


def _run(argv: list[str], *, step: str, cwd: Path | None = None, timeout: float = 300,
         input_bytes: bytes | None = None, binary: bool = False) -> subprocess.CompletedProcess:
    try:
        result = subprocess.run(argv, cwd=cwd, input=input_bytes, capture_output=True, timeout=timeout,
                                text=not binary)
    except FileNotFoundError as exc:
        raise ImageToolMissing(what=argv[0], reason=str(exc)) from exc
    except subprocess.TimeoutExpired as exc:
        raise DemoImageBuildFailed(step=step, reason=f"{argv[0]} did not finish within {timeout} s") from exc
    if result.returncode != 0:
        stderr = result.stderr.decode(errors="replace") if binary else result.stderr
        raise DemoImageBuildFailed(step=step, reason=f"{' '.join(argv)} exited {result.returncode}: "
                                                     f"{stderr.strip()[-800:]}")
    return result


# ---- command line (`vdi image build-demo`) ------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="vdi image build-demo",
        description="Build (once) the tiny demo desktop from Debian packages and print where its files are.",
    )
    parser.add_argument("--cache-dir", help="cache root (default: $VDI_CACHE_DIR or ~/.cache/vdi)")
    parser.add_argument("--publish", metavar="DIR", help="also copy the files into DIR (shared storage)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of lines")
    parser.add_argument("--variant", choices=sorted(VARIANTS), default=DEFAULT_VARIANT,
                        help="console: the cloud kernel's text console (default); planner: a 1024x768 framebuffer "
                             "desktop with the planner's guest side (docs/planner.md)")
    args = parser.parse_args(argv)
    try:
        image = ensure_demo_image(args.cache_dir, variant=args.variant)
        if args.publish:
            image = image.publish(args.publish)
    except VdiError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(image.to_dict()))
    else:
        print(f"kernel:      {image.kernel}")
        print(f"initrd:      {image.initrd}")
        print(f"template:    {image.template}")
        print(f"template id: {image.template_id}")
        print(f"kernel ver.: {image.kernel_version}")
        print(f"variant:     {image.variant}")
        print(f"apps:        {', '.join(image.apps)}")
        print(f"cmdline:     {image.cmdline()}")
        print(f"built in:    {image.build_seconds} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
