#!/usr/bin/env python3
"""Nightly power saving: shut down the running desktops nobody is using, and optionally put the hosts left with
no running desktop into maintenance, so that their power agent can switch them off.

Run it from cron at night, e.g. `30 20 * * 1-5 nightly_power_saving.py --exclude-pool kiosk`. It reads the
manager's address and token like `vdi` does (VDI_URL and VDI_TOKEN, or ~/.config/vdi/config.toml from
`vdi login`). Exit status 1 if any desktop could not be shut down.
"""
from __future__ import annotations

import argparse
import sys

from vdi_client import ApiError, Client
from vdi_client.config import load


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--search", default="Vms: status = up",
                        help="the desktops to consider (default: every running one)")
    parser.add_argument("--exclude-pool", action="append", default=[], metavar="POOL",
                        help="leave this pool's desktops running (repeatable)")
    parser.add_argument("--idle-hosts", action="store_true",
                        help="then put hosts with no running desktop into maintenance")
    parser.add_argument("--dry-run", action="store_true", help="say what would be done, do nothing")
    args = parser.parse_args(argv)

    settings = load()
    failed = 0
    with Client(settings.url, settings.token) as vdi:
        excluded = {p.id for p in vdi.pools.iter() if p.name in args.exclude_pool}
        for desktop in list(vdi.search.iter(args.search)):
            if desktop.logged_in_user or desktop.pool_id in excluded:
                continue
            if vdi.sessions.list(desktop_id=desktop.id, state="connected").total:
                continue  # someone has its console open
            if args.dry_run:
                print(f"would shut down {desktop.name}")
                continue
            try:
                vdi.desktops.stop(desktop.id)
                print(f"shut down {desktop.name}")
            except ApiError as exc:
                failed += 1
                print(f"{desktop.name}: {exc.detail}", file=sys.stderr)
        if args.idle_hosts:
            for host in vdi.hosts.iter():
                if host.status != "up" or vdi.search.page(f"Vms: status = up and Hosts.name = {host.name}").total:
                    continue
                if args.dry_run:
                    print(f"would put host {host.name} into maintenance")
                    continue
                vdi.hosts.maintenance(host.id, reason="nightly power saving: no running desktop")
                print(f"host {host.name} is in maintenance")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
