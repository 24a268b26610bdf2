"""Helpers for the browser tests: Debian's Chromium through Playwright, a site on loopback.

Playwright drives the system binary (`executable_path`); it never downloads a browser.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import tempfile
import time
from collections.abc import AsyncIterator
from html import escape
from pathlib import Path

from aiohttp import web
from aiohttp.test_utils import TestServer
from playwright.async_api import Browser, BrowserContext, async_playwright

# Root in a container has no user namespaces for the sandbox; nothing here may reach out
# (updates, QUIC probes, sync): the machine has no network beyond loopback.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
# Chromium implements Global Privacy Control behind this feature; forced, every request
# carries Sec-GPC: 1 and navigator.globalPrivacyControl is true, as in a browser that ships it.
GPC_FEATURE = "--enable-features=GlobalPrivacyControlForce"
PAGE_HEIGHT_PX = 5000

PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>Beacon test page</title>
<script async src="{collector}/t.js" data-site="{site}"{consent}></script>
</head><body style="margin:0">
<div style="height:{height}px">
<button id="signup" data-beacon-event="signup" data-beacon-prop-plan="pro"
        style="position:fixed;top:8px;left:8px">Sign up</button>
<a id="next" href="/spa/next" style="position:fixed;top:8px;left:120px">Next</a>
</div>
<script>
// A single-page app's router: to the top, then a history entry, no page load.
document.getElementById("next").addEventListener("click", function (ev) {{
  ev.preventDefault();
  window.scrollTo(0, 0);
  history.pushState({{}}, "", "/spa/next");
}});
</script>
</body></html>
"""


def chromium_path() -> str:
    """Debian's chromium (`make deps` installs it); a clear failure, not a skip, without it."""
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        raise RuntimeError("chromium is not installed: run `make deps` (Debian's chromium)")
    return path


class Site:
    """A web site on loopback whose every page embeds the snippet from `collector`.

    The page's `site` query parameter becomes data-site, and `consent` data-consent; both
    stay out of the stored URL (not allow-listed), as any other parameter would.
    """

    def __init__(self, collector: str) -> None:
        self.collector = collector
        self.server: TestServer | None = None

    async def page(self, request: web.Request) -> web.Response:
        consent = request.query.get("consent", "")
        html = PAGE.format(
            collector=escape(self.collector),
            site=escape(request.query.get("site", "web")),
            consent=f' data-consent="{escape(consent)}"' if consent else "",
            height=PAGE_HEIGHT_PX,
        )
        return web.Response(text=html, content_type="text/html")

    async def __aenter__(self) -> Site:
        app = web.Application()
        app.router.add_get("/{path:.*}", self.page)
        self.server = TestServer(app, host="127.0.0.1")
        await self.server.start_server()
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self.server is not None:
            await self.server.close()

    def url(self, path: str) -> str:
        assert self.server is not None
        return str(self.server.make_url(path))


@contextlib.asynccontextmanager
async def chromium_profile(wait_s: float = 15) -> AsyncIterator[str]:
    """A fresh profile directory, removed afterwards. Chromium's helper processes can still
    write into it for a moment after the browser exited: the removal retries until the
    directory goes, up to `wait_s`."""
    profile = tempfile.mkdtemp(prefix="beacon-chromium-")
    try:
        yield profile
    finally:
        deadline = time.monotonic() + wait_s
        while True:
            try:
                shutil.rmtree(profile)
                break
            except FileNotFoundError:
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.2)


@contextlib.asynccontextmanager
async def chromium(*, dnt: bool = False, gpc: bool = False) -> AsyncIterator[BrowserContext]:
    """A fresh headless Chromium profile; `dnt` sets the browser's own Do-Not-Track setting."""
    async with chromium_profile() as profile:
        if dnt:
            # The preference behind Settings > Privacy > "Send a Do Not Track request".
            default = Path(profile) / "Default"
            default.mkdir()
            (default / "Preferences").write_text(json.dumps({"enable_do_not_track": True}))
        async with async_playwright() as playwright:
            context = await playwright.chromium.launch_persistent_context(
                profile,
                executable_path=chromium_path(),
                headless=True,
                args=[*CHROMIUM_ARGS, *([GPC_FEATURE] if gpc else [])],
                viewport={"width": 1280, "height": 720},
                timeout=30_000,
            )
            context.set_default_timeout(15_000)
            try:
                yield context
            finally:
                await context.close()


@contextlib.asynccontextmanager
async def chromium_tabs(*, gpc: bool = False) -> AsyncIterator[Browser]:
    """A headless Chromium whose tabs hide and show as a person's do.

    Pages that Playwright opens itself are kept visible whatever happens (it turns on focus
    emulation for each, and that holds document.visibilityState at "visible"), so the browser
    is started here and attached over the DevTools protocol without Playwright's defaults:
    a new tab hides the others, `bring_to_front` shows one again. Open pages with
    `browser.contexts[0].new_page()`; the window (1280 wide) is the viewport.
    """
    async with chromium_profile() as profile:
        args = [*CHROMIUM_ARGS, *([GPC_FEATURE] if gpc else [])]
        # Port 0: Chromium picks a free loopback port and writes it to DevToolsActivePort.
        process = await asyncio.create_subprocess_exec(
            chromium_path(),
            "--headless",
            *args,
            "--remote-debugging-port=0",
            f"--user-data-dir={profile}",
            "--window-size=1280,800",
            "about:blank",
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )
        try:
            port = await _devtools_port(Path(profile) / "DevToolsActivePort", process)
            async with async_playwright() as playwright:
                browser = await playwright.chromium.connect_over_cdp(
                    f"http://127.0.0.1:{port}", no_defaults=True, timeout=30_000
                )
                browser.contexts[0].set_default_timeout(15_000)
                try:
                    yield browser
                finally:
                    await browser.close()
        finally:
            if process.returncode is None:
                process.terminate()
            try:
                await asyncio.wait_for(process.wait(), 10)
            except TimeoutError:
                process.kill()
                await process.wait()


async def _devtools_port(
    path: Path, process: asyncio.subprocess.Process, wait_s: float = 30
) -> str:
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        if process.returncode is not None:
            raise RuntimeError(f"chromium exited with status {process.returncode} at start")
        text = path.read_text() if path.exists() else ""
        if text.strip():
            return text.split()[0]
        await asyncio.sleep(0.05)
    raise RuntimeError(f"chromium wrote no DevTools port in {wait_s} s")
