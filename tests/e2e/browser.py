"""Debian's chromium driven by Playwright, kept off the internet; shared by tests/e2e and scripts/screenshots.py.

- `launch_chromium(playwright)`: /usr/bin/chromium (never a browser Playwright downloads), headless, with the flags
  that stop it calling Google. Playwright gives every launch a fresh temporary profile (--user-data-dir).
- `OffsiteGuard`: installed on a browser context, it lets http(s) and ws(s) requests to 127.0.0.1/localhost
  through and aborts every other one, recording it. Anything that slips past routing and reaches the network
  (an answer from elsewhere, or a failure other than our abort or the page's own Content-Security-Policy) and
  any websocket elsewhere is recorded too. A test (or the screenshot script) fails when `take()` returns
  anything. A load the page's CSP refuses never leaves the browser and is not recorded.
- `new_guarded_context(browser, guard, base_url)`: a fresh context with the guard installed.
- `log_in(context, base_url, account)`: POST /api/v1/auth/login from the context, so the session cookie it
  sets lands in the context's cookie jar as if the login form had been used.
- `assert_canvas_shows(page, api, desktop_id, name)`: the browser console's noVNC canvas shows the same screen
  as the node's screenshot of the desktop (GET /desktops/{id}/screenshot through `api`, an admin's httpx client),
  compared as small greyscale thumbnails drawn in the page; the pictures go to VDI_E2E_SCREENSHOTS (default /tmp).
"""
from __future__ import annotations

import base64
import os
import re
import time
from pathlib import Path
from urllib.parse import urlsplit

from playwright.sync_api import (Browser, BrowserContext, Page, Playwright, Request, Response, Route, WebSocket,
                                 WebSocketRoute)
from playwright.sync_api import TimeoutError as PlaywrightTimeoutError

CHROMIUM = Path(os.environ.get("VDI_E2E_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = ("--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync")
LOCAL_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})
NETWORK_SCHEMES = frozenset({"http", "https", "ws", "wss", "ftp"})
# Playwright's own wait for one action or navigation; generous: two shared cores also run Postgres, the manager
# and other people's tests. Not a speed assertion: a slow page still passes.
ACTION_TIMEOUT_MS = 60_000
SETTLE_TIMEOUT_MS = 10_000
SCREENSHOTS = Path(os.environ.get("VDI_E2E_SCREENSHOTS", "/tmp"))
# Mean absolute difference of two 64x48 greyscale thumbnails (0-255) under which they show the same screen. Text
# on a black screen against another text differs by far more; one scaled with another filter by a few units.
SAME_SCREEN = 12.0
THUMBNAIL = """async ([source, isPng]) => {
  const canvas = document.createElement("canvas");
  canvas.width = 64; canvas.height = 48;
  const context = canvas.getContext("2d");
  let image = source;
  if (isPng) {
    const bytes = Uint8Array.from(atob(source), (c) => c.charCodeAt(0));
    image = await createImageBitmap(new Blob([bytes], { type: "image/png" }));
  } else {
    image = document.querySelector("#screen canvas");
  }
  context.drawImage(image, 0, 0, 64, 48);
  const rgba = context.getImageData(0, 0, 64, 48).data;
  const grey = [];
  for (let i = 0; i < rgba.length; i += 4) grey.push(Math.round((rgba[i] + rgba[i + 1] + rgba[i + 2]) / 3));
  return grey;
}"""


class ChromiumMissing(RuntimeError):
    pass


def chromium_executable() -> Path:
    if not os.access(CHROMIUM, os.X_OK):
        raise ChromiumMissing(f"the browser tests need Debian's chromium at {CHROMIUM}, which is missing: "
                              "`make sysdeps-test` installs it (TEST_PACKAGES); Playwright must not download one")
    return CHROMIUM


def launch_chromium(playwright: Playwright) -> Browser:
    return playwright.chromium.launch(executable_path=str(chromium_executable()), headless=True,
                                      args=list(CHROMIUM_ARGS))


def is_local(url: str) -> bool:
    """True for a URL that stays on this machine: http(s)/ws(s) to a loopback name, or no network at all (data:,
    blob:, about:)."""
    parts = urlsplit(url)
    if parts.scheme not in NETWORK_SCHEMES:
        return parts.scheme in ("data", "blob", "about")
    return parts.hostname in LOCAL_HOSTS


class OffsiteGuard:
    """Records (and, through routing, aborts) every request that would leave 127.0.0.1."""

    def __init__(self) -> None:
        self.blocked: list[str] = []

    def _record(self, what: str) -> None:
        if what not in self.blocked:
            self.blocked.append(what)

    def take(self) -> list[str]:
        """What was recorded since the last take(), and forget it."""
        found, self.blocked = self.blocked, []
        return found

    def install(self, context: BrowserContext, *, route_web_sockets: bool = True) -> None:
        context.route("**/*", self._route)
        if route_web_sockets:
            context.route_web_socket(re.compile(".*"), self._route_web_socket)
        context.on("response", self._on_response)
        context.on("requestfailed", self._on_request_failed)
        context.on("page", self.watch_page)

    def watch_page(self, page: Page) -> None:
        page.on("websocket", self._on_websocket)

    def _route(self, route: Route) -> None:
        request = route.request
        if is_local(request.url):
            route.fallback()
        else:
            self._record(f"{request.method} {request.url}")
            route.abort("blockedbyclient")

    def _route_web_socket(self, ws: WebSocketRoute) -> None:
        if is_local(ws.url):
            ws.connect_to_server()  # messages flow both ways untouched
        else:
            self._record(f"WEBSOCKET {ws.url}")
            ws.close(code=1008, reason="blocked: the browser tests stay on 127.0.0.1")

    def _on_response(self, response: Response) -> None:
        if not is_local(response.url):
            self._record(f"{response.request.method} {response.url}")

    def _on_request_failed(self, request: Request) -> None:
        # ERR_BLOCKED_BY_CLIENT: our own abort, recorded by _route; csp: refused by the page before any request
        if not is_local(request.url) and request.failure not in ("net::ERR_BLOCKED_BY_CLIENT", "csp"):
            self._record(f"{request.method} {request.url}")

    def _on_websocket(self, ws: WebSocket) -> None:
        if not is_local(ws.url):
            self._record(f"WEBSOCKET {ws.url}")


def new_guarded_context(browser: Browser, guard: OffsiteGuard, base_url: str, *, route_web_sockets: bool = True,
                        **options) -> BrowserContext:
    """A fresh context (no cookies, no storage) whose every request passes `guard`; page.goto("/docs") is
    relative to `base_url`. Service workers are blocked: their requests could bypass routing.

    route_web_sockets=False: Playwright's WebSocket routing replaces the page's WebSocket with a stand-in that noVNC
    cannot use (its binary RFB stream never arrives), so the browser console's test opens real WebSockets; one that
    would leave 127.0.0.1 is then recorded (and fails the test) but not aborted."""
    context = browser.new_context(base_url=base_url, service_workers="block", **options)
    guard.install(context, route_web_sockets=route_web_sockets)
    context.set_default_timeout(ACTION_TIMEOUT_MS)
    context.set_default_navigation_timeout(ACTION_TIMEOUT_MS)
    return context


def log_in(context: BrowserContext, base_url: str, account) -> None:
    """Log `account` (tests.e2e.server.Account) in through the API; the context keeps the session cookie."""
    response = context.request.post(f"{base_url}/api/v1/auth/login",
                                    data={"username": account.username, "password": account.password})
    if not response.ok:
        raise RuntimeError(f"log in as {account.username}: {response.status} {response.text()}")


def mean_difference(a: list[int], b: list[int]) -> float:
    return sum(abs(x - y) for x, y in zip(a, b, strict=True)) / len(a)


def assert_canvas_shows(page: Page, api, desktop_id: str, name: str, bound_s: float = 60.0) -> None:
    """The console page's noVNC canvas (`#screen canvas`) and the node's screenshot of desktop `desktop_id` (a PNG,
    from `api`: an httpx client for /api/v1 allowed to read it) show the same screen. The guest may be writing to
    it (boot text): compare again until two captures close together agree, for up to `bound_s` (a bound, not a
    speed assertion). Saves <name>-node.png, -canvas.png and -page.png in SCREENSHOTS; AssertionError with the smallest difference seen, or when the screen is one colour
    (nothing was compared)."""
    best, shot, shown = None, b"", []
    deadline = time.monotonic() + bound_s
    while time.monotonic() < deadline:
        answer = api.get(f"/desktops/{desktop_id}/screenshot")
        assert answer.status_code == 200, answer.text
        shot = answer.content
        node = page.evaluate(THUMBNAIL, [base64.b64encode(shot).decode(), True])
        shown = page.evaluate(THUMBNAIL, [None, False])
        difference = mean_difference(node, shown)
        best = difference if best is None else min(best, difference)
        if difference < SAME_SCREEN:
            break
        time.sleep(1)
    save_as = SCREENSHOTS / name
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    Path(f"{save_as}-node.png").write_bytes(shot)
    page.locator("#screen canvas").screenshot(path=f"{save_as}-canvas.png")
    page.screenshot(path=f"{save_as}-page.png")
    assert best is not None and best < SAME_SCREEN, \
        f"the canvas differs from the node's screenshot by {best:.1f} (mean, 0-255); see {save_as}-*.png"
    assert max(shown) - min(shown) > 30, "the screen shows nothing but one colour: nothing was compared"


def page_file_name(path: str) -> str:
    """'/admin/desktops?q=x' -> 'admin-desktops-q-x.png'; '/' -> 'index.png'."""
    name = re.sub(r"[^A-Za-z0-9]+", "-", path).strip("-")
    return f"{name or 'index'}.png"


def save_screenshots(browser: Browser, base_url: str, pages: list[tuple[str | None, str]], out_dir: Path, *,
                     account=None, viewport: tuple[int, int] = (1280, 800)) -> list[Path]:
    """<name>.png of each (name, path) page on `base_url` in `out_dir` (no name: page_file_name(path)), logged in
    as `account` if given. Each is taken once the network has been idle for half a second (scripts have drawn),
    or SETTLE_TIMEOUT_MS after the load for a page holding a live event stream open. RuntimeError if a page does
    not answer 2xx or tried to reach beyond 127.0.0.1."""
    out_dir.mkdir(parents=True, exist_ok=True)
    guard = OffsiteGuard()
    context = new_guarded_context(browser, guard, base_url, viewport={"width": viewport[0], "height": viewport[1]})
    saved = []
    try:
        if account is not None:
            log_in(context, base_url, account)
        page = context.new_page()
        for name, path in pages:
            response = page.goto(path, wait_until="load")
            if response is None or not response.ok:
                raise RuntimeError(f"{path}: {response.status if response else 'no response'}")
            try:  # what scripts fetch after the load (the docs' openapi.json); a page with an open event
                page.wait_for_load_state("networkidle", timeout=SETTLE_TIMEOUT_MS)  # stream never goes idle
            except PlaywrightTimeoutError:
                pass
            target = out_dir / (f"{name}.png" if name else page_file_name(path))
            page.screenshot(path=str(target), full_page=False)
            saved.append(target)
    finally:
        context.close()
    blocked = guard.take()
    if blocked:
        raise RuntimeError("pages tried to reach beyond 127.0.0.1: " + ", ".join(blocked))
    return saved
