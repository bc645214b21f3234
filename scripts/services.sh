#!/usr/bin/env bash
# Make sure the services the test suite talks to are installed and running on this machine:
# Postgres (127.0.0.1:5432, user postgres, trust for loopback), Redis (127.0.0.1:6379), libvirtd.
# Idempotent: a running service is left alone. Needs root for installs and daemons.
set -euo pipefail

log() { printf '[services] %s\n' "$*" >&2; }
SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
APT_OPTS=(-y -q -o DPkg::Lock::Timeout=600 --no-install-recommends)

apt_install() {
    local missing=() p
    for p in "$@"; do dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'ok installed' || missing+=("$p"); done
    [ ${#missing[@]} -eq 0 ] && return 0
    log "installing ${missing[*]}"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install "${APT_OPTS[@]}" "${missing[@]}" >/dev/null
}

pg_ok() { psql -h 127.0.0.1 -U postgres -d postgres -tAc 'select 1' >/dev/null 2>&1; }

pg_connections() { psql -h 127.0.0.1 -U postgres -d postgres -tAc 'show max_connections' 2>/dev/null || echo 0; }

ensure_postgres() {
    if pg_ok; then
        # make test runs two shards at once (scripts/run-tests.sh), each with managers of up to 60 connections:
        # Debian's default 100 runs out. A server with fewer is restarted once with 300 (before any test runs).
        [ "$(pg_connections)" -ge 300 ] && return 0
        local running; running=$(ls /etc/postgresql | sort -V | tail -1)
        log "raising Postgres max_connections to 300 (was $(pg_connections)) and restarting it"
        $SUDO pg_conftool "$running" main set max_connections 300 &&
            $SUDO pg_ctlcluster --skip-systemctl-redirect "$running" main restart || true
        for _ in $(seq 1 60); do pg_ok && break; sleep 0.5; done
        pg_ok || { log "Postgres did not come back after the restart"; exit 1; }
        return 0
    fi
    command -v pg_ctlcluster >/dev/null || apt_install postgresql postgresql-client
    local version; version=$(ls /etc/postgresql | sort -V | tail -1)
    if ! pg_isready -h 127.0.0.1 -q 2>/dev/null; then
        if [ "$(pg_conftool "$version" main show -s max_connections 2>/dev/null || echo 100)" -lt 300 ]; then
            $SUDO pg_conftool "$version" main set max_connections 300 || true
        fi
        log "starting Postgres $version"
        $SUDO pg_ctlcluster --skip-systemctl-redirect "$version" main start || true
        for _ in $(seq 1 60); do pg_isready -h 127.0.0.1 -q && break; sleep 0.5; done
    fi
    if ! pg_ok; then
        # A fresh install asks for passwords on loopback; the tests use trust, as CI's server does.
        local hba=/etc/postgresql/$version/main/pg_hba.conf
        log "allowing trust authentication for loopback in $hba"
        $SUDO sed -i '1i host all all 127.0.0.1/32 trust\nhost all all ::1/128 trust' "$hba"
        $SUDO pg_ctlcluster --skip-systemctl-redirect "$version" main reload
        sleep 1
    fi
    pg_ok || { log "Postgres is not reachable on 127.0.0.1:5432 as user postgres"; exit 1; }
}

ensure_redis() {
    redis-cli -h 127.0.0.1 ping >/dev/null 2>&1 && return 0
    command -v redis-server >/dev/null || apt_install redis-server redis-tools
    log "starting Redis"
    $SUDO mkdir -p /var/lib/redis /var/log/redis
    $SUDO redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no \
        --dir /var/lib/redis --logfile /var/log/redis/ci.log
    for _ in $(seq 1 40); do redis-cli -h 127.0.0.1 ping >/dev/null 2>&1 && return 0; sleep 0.25; done
    log "Redis did not start"; exit 1
}

ensure_kvm_device() {
    # Without udev (containers, CI), /dev/kvm stays root:root 0600; libvirt then probes QEMU as root and as
    # libvirt-qemu, sees two answers, and re-probes on every call (minutes per define). udev's rule is this:
    [ -e /dev/kvm ] || return 0
    getent group kvm >/dev/null || return 0
    [ "$(stat -c %G:%a /dev/kvm)" = "kvm:660" ] || { $SUDO chgrp kvm /dev/kvm && $SUDO chmod 660 /dev/kvm; }
}

ensure_libvirtd() {
    ensure_kvm_device
    virsh -c qemu:///system version >/dev/null 2>&1 && return 0
    command -v libvirtd >/dev/null || apt_install libvirt-daemon-system libvirt-clients qemu-system-x86 qemu-utils
    log "starting libvirtd"
    $SUDO mkdir -p /var/log/libvirt /var/run/libvirt
    pgrep -x virtlogd >/dev/null || $SUDO virtlogd -d
    pgrep -x libvirtd >/dev/null || $SUDO libvirtd -d
    for _ in $(seq 1 40); do virsh -c qemu:///system version >/dev/null 2>&1 && return 0; sleep 0.25; done
    log "libvirtd did not answer"; exit 1
}

for service in "${@:-postgres redis libvirtd}"; do
    for s in $service; do "ensure_$s"; done
done
