"""PNG screenshots of the manager's pages, taken by Debian's chromium against a real manager: never by hand.

    .venv/bin/python scripts/screenshots.py [--out DIR] [--role ROLE] [NAME=]PATH ...

By default it starts what the browser tests start (tests/e2e/server.py: a fresh database on the test Postgres
server, `vdi demo`, `vdi serve` on a free 127.0.0.1 port; `make services` starts Postgres), logs in as an account
with ROLE through the API, saves <NAME or the path's words>.png per page in DIR and stops everything again.
With --base-url it photographs a manager that is already running (e.g. `make run`'s), logging in with --username
and --password-file if given. Like the browser tests, chromium never reaches beyond 127.0.0.1: a page that tries
makes the script fail, as does a page that does not answer 2xx.

DIR defaults to build/screenshots/. `make screenshots` writes docs/screenshots/, the images the README shows; both
are ignored by git (no generated files or images in the tree), so the README's pictures are always of the code
that is checked out.
"""
from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # tests.e2e is the harness this script shares with the browser tests

import httpx  # noqa: E402
from playwright.sync_api import sync_playwright  # noqa: E402

from tests.e2e.browser import launch_chromium, save_screenshots  # noqa: E402
from tests.e2e.server import ROLES, Account, running_manager  # noqa: E402
from tests.harness.postgres import fresh_database  # noqa: E402

# A path's {<query>} is the id of the query's first result (object pages need an id that changes every run).
DEFAULT_PAGES = ("search=/admin", "results=/admin?q=Vms: sortby name", "dashboard=/admin/dashboard",
                 "desktop=/admin/desktops/{Vms: sortby name}", "host=/admin/hosts/{Hosts: name = vs-a}",
                 "pool=/admin/pools/{Pools: sortby name}", "new-pool=/admin/pools/new", "jobs=/admin/jobs",
                 "api-docs=/docs", "api-redoc=/redoc")
PLACEHOLDER = re.compile(r"\{([^{}]+)\}")


def resolve_ids(pages: list[tuple[str | None, str]], api) -> list[tuple[str | None, str]]:
    """Replace each {<query>} in the paths by the id of that search's first result (`api`: an httpx client for
    /api/v1 holding a token). SystemExit when a search finds nothing."""
    def first_id(match: re.Match) -> str:
        found = api.get("/search", params={"q": match.group(1), "page_size": 1})
        found.raise_for_status()
        items = found.json()["items"]
        if not items:
            raise SystemExit(f"screenshots: the search {match.group(1)!r} found nothing to photograph")
        return items[0]["id"]

    return [(name, PLACEHOLDER.sub(first_id, path)) for name, path in pages]


def parse_pages(specs: list[str]) -> list[tuple[str | None, str]]:
    """'search=/admin?q=x' -> ('search', '/admin?q=x'); '/docs' -> (None, '/docs')."""
    pages = []
    for spec in specs:
        name, sep, path = spec.partition("=")
        if not sep or name.startswith("/"):
            name, path = None, spec
        if not path.startswith("/"):
            raise SystemExit(f"screenshots: {spec!r}: a page is a path on the manager, such as /admin")
        pages.append((name, path))
    return pages


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("pages", nargs="*", default=list(DEFAULT_PAGES), metavar="[NAME=]PATH",
                        help=f"pages to photograph (default: {' '.join(DEFAULT_PAGES)})")
    parser.add_argument("--out", type=Path, default=REPO / "build" / "screenshots", help="where the PNGs go")
    parser.add_argument("--role", choices=ROLES, default="SuperUser", help="who is logged in (default SuperUser)")
    parser.add_argument("--width", type=int, default=1280)
    parser.add_argument("--height", type=int, default=800)
    parser.add_argument("--base-url", help="photograph this running manager instead of starting one")
    parser.add_argument("--username", help="with --base-url: log in as this user")
    parser.add_argument("--password-file", type=Path, help="with --username: a file holding the password")
    args = parser.parse_args(argv)
    pages = parse_pages(args.pages)
    viewport = (args.width, args.height)

    def shoot(base_url: str, account: Account | None, api) -> list[Path]:
        resolved = resolve_ids(pages, api) if any(PLACEHOLDER.search(path) for _, path in pages) else pages
        with sync_playwright() as playwright:
            browser = launch_chromium(playwright)
            try:
                return save_screenshots(browser, base_url, resolved, args.out, account=account, viewport=viewport)
            finally:
                browser.close()

    if args.base_url:
        account = None
        if args.username:
            password = args.password_file.read_text().strip() if args.password_file else ""
            account = Account(args.username, password, role="")
        base_url = args.base_url.rstrip("/")
        with httpx.Client(base_url=f"{base_url}/api/v1", timeout=60) as api:
            if account is not None:
                token = api.post("/auth/login", json={"username": account.username, "password": account.password})
                token.raise_for_status()
                api.headers["Authorization"] = f"Bearer {token.json()['token']}"
            saved = shoot(base_url, account, api)
    else:
        with fresh_database("vdi_screenshots") as url, running_manager(url) as server:
            saved = shoot(server.base_url, server.account(args.role), server.admin_api)
    for path in saved:
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
