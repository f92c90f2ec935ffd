"""Browser fixtures: Debian's Chromium driven by Playwright, against the app on 127.0.0.1.

The browser is never downloaded: Playwright launches /usr/bin/chromium. Every request a
page makes to a host other than 127.0.0.1 is aborted and recorded, and tests assert
that none happened. Camera and microphone are Chromium's fake devices.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

CHROMIUM = os.environ.get("CHROMIUM_PATH", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream",
    "--allow-loopback-in-peer-connection", "--autoplay-policy=no-user-gesture-required",
]
DESKTOP = {"width": 1280, "height": 800}
PHONE = {"width": 390, "height": 844}
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "screenshots"

if not Path(CHROMIUM).exists() or shutil.which(CHROMIUM) is None:
    pytest.skip(f"Chromium not found at {CHROMIUM} (scripts/test.sh installs it)", allow_module_level=True)
playwright_api = pytest.importorskip("playwright.async_api")


def route_patterns(app: web.Application) -> list[re.Pattern[str]]:
    """Return a regex per registered route, to tell a missing backend route from a bug."""
    patterns = []
    for resource in app.router.resources():
        canonical = resource.canonical
        if canonical.startswith("/static"):
            patterns.append(re.compile(re.escape(canonical) + r"(/.*)?$"))
        else:
            patterns.append(re.compile("^" + re.sub(r"\\\{[^}]*\\\}", "[^/]+", re.escape(canonical)) + "$"))
    return patterns


def has_route(app: web.Application, path: str) -> bool:
    """Tell whether `path` (a concrete path) is served by a registered route."""
    return any(p.match(path) for p in route_patterns(app))


@dataclass
class Watch:
    """What a browser context did that a test must check: stray hosts and console errors."""

    app: web.Application
    foreign: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def _registered(self, path: str) -> bool:
        return has_route(self.app, path)

    def real_errors(self) -> list[str]:
        """Console errors, minus failed loads of API routes this branch does not have."""
        out = []
        for line in self.errors:
            what = line.split(" (on ", 1)[0]  # the page's own address does not count
            urls = re.findall(r"(?:https?|wss?)://127\.0\.0\.1:\d+(/[^\s'\"?\]]*)", what)
            if urls and all(u.startswith("/api/") and not self._registered(u) for u in urls):
                continue
            out.append(line)
        return out


@pytest.fixture(scope="session")
async def browser() -> AsyncIterator[Any]:
    async with playwright_api.async_playwright() as p:
        b = await p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        yield b
        await b.close()


@pytest.fixture
def base_url(client: TestClient) -> str:
    """The app under test on a real TCP port on 127.0.0.1."""
    url = str(client.make_url("/")).rstrip("/")
    assert urlsplit(url).hostname == "127.0.0.1"
    return url


@pytest.fixture
async def new_context(browser: Any, client: TestClient, base_url: str) -> AsyncIterator[Any]:
    """Make browser contexts that abort non-local requests and collect console errors."""
    made: list[tuple[Any, Watch]] = []

    async def make(viewport: dict[str, int] = DESKTOP, session: dict[str, Any] | None = None) -> tuple[Any, Watch]:
        watch = Watch(client.server.app)
        context = await browser.new_context(viewport=viewport, base_url=base_url)
        await context.grant_permissions(["camera", "microphone"], origin=base_url)

        async def guard(route: Any) -> None:
            if urlsplit(route.request.url).hostname not in ("127.0.0.1",) and not route.request.url.startswith("data:"):
                watch.foreign.append(route.request.url)
                await route.abort()
            else:
                await route.continue_()

        await context.route("**/*", guard)
        if session is not None:
            # Once per origin (not on about:blank, not over a rotated session).
            await context.add_init_script(
                "if (location.protocol === 'http:' && !sessionStorage.getItem('seeded')) {"
                f" localStorage.setItem('shopstream.session', {json.dumps(json.dumps(session))});"
                " sessionStorage.setItem('seeded', '1'); }"
            )

        def on_page(page: Any) -> None:
            def on_console(msg: Any) -> None:
                if msg.type == "error":
                    where = (msg.location or {}).get("url", "")
                    watch.errors.append(f"{msg.text} [{where}] (on {page.url})")

            page.on("console", on_console)
            page.on("pageerror", lambda exc: watch.errors.append(f"uncaught {exc} (on {page.url})"))

        context.on("page", on_page)
        made.append((context, watch))
        return context, watch

    yield make
    for context, _ in made:
        await context.close()


def session_of(user: Any, name: str = "Test User") -> dict[str, Any]:
    """The localStorage session the pages keep for a factory user."""
    return {
        "accessToken": user.access_token, "refreshToken": user.refresh_token,
        "user": {"id": user.id, "email": user.email, "name": name, "role": user.role},
    }


async def shoot(page: Any, name: str) -> Path:
    """Write a full-page screenshot into test-artifacts/screenshots/."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    await page.screenshot(path=str(path), full_page=True)
    return path


async def settle(page: Any, timeout_ms: int = 5000) -> None:
    """Wait until the page shows no loading indicator (data arrived or failed clearly)."""
    await page.wait_for_load_state("load")
    try:
        await page.wait_for_function("() => !document.querySelector('.loading')", timeout=timeout_ms)
    except playwright_api.TimeoutError:
        pass  # the screenshot shows what is still loading
