#!/usr/bin/env python3
"""Re-image every desktop of a pool onto a template version (default: the template's latest), a few at a time,
with a progress line per desktop; desktops in use are skipped unless --power-off says to pull the plug.

    reimage_pool.py eng                    # the pool's template's latest version
    reimage_pool.py eng --version 3f2c...  # a given version
It reads the manager's address and token like `vdi` does (VDI_URL and VDI_TOKEN, or ~/.config/vdi/config.toml).
Exit status 1 if any desktop failed.
"""
from __future__ import annotations

import argparse
import sys

from vdi_client import ApiError, Client, JobFailed
from vdi_client.config import load


def show(line: str) -> None:
    """A progress line on the terminal, rewritten in place (nothing when stderr is a file or a pipe)."""
    if sys.stderr.isatty():
        print(f"\r{line}\x1b[K", end="", file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("pool", help="the pool's name")
    parser.add_argument("--version", help="the template version's id (default: the template's latest)")
    parser.add_argument("--power-off", action="store_true", help="re-image running idle desktops too (pulls the "
                                                                 "plug first)")
    parser.add_argument("--batch", type=int, default=4, help="desktops re-imaged at once (default 4)")
    parser.add_argument("--dry-run", action="store_true", help="list the desktops, change nothing")
    args = parser.parse_args(argv)

    settings = load()
    failed = 0
    with Client(settings.url, settings.token) as vdi:
        pools = [p for p in vdi.pools.iter() if p.name == args.pool]
        if not pools:
            print(f"no pool is named {args.pool!r}", file=sys.stderr)
            return 1
        pool = pools[0]
        version = args.version or vdi.templates.get(pool.template_id).latest_version_id
        desktops = list(vdi.search.iter(f"Vms: pool = {pool.name} sortby name"))
        print(f"pool {pool.name}: {len(desktops)} desktops onto template version {version}")
        for start in range(0, len(desktops), max(args.batch, 1)):
            started = []
            for desktop in desktops[start:start + args.batch]:
                if args.dry_run:
                    print(f"would re-image {desktop.name}")
                    continue
                try:
                    started.append((desktop, vdi.desktops.reimage(desktop.id, template_version_id=version,
                                                                  power_off=args.power_off)))
                except ApiError as exc:
                    failed += 1
                    print(f"{desktop.name}: {exc.detail}", file=sys.stderr)
            for desktop, job in started:
                try:
                    vdi.jobs.wait(job, progress=lambda j, name=desktop.name: show(f"{name}: {j.progress:3.0f}%"))
                    show("")
                    print(f"{desktop.name}: re-imaged")
                except JobFailed as exc:
                    failed += 1
                    show("")
                    print(f"{desktop.name}: {exc.job.error}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
