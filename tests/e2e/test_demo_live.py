"""`shopstream demo` as a newcomer runs it: the printed viewer URL shows live video at
once (the built-in test-card publisher), with product pictures and chat; `--no-live`
leaves the show scheduled; search works on the embedded database (no pg_trgm there).

The demo runs as a subprocess on the embedded PostgreSQL in a temporary data folder,
with ICE restricted to 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tests.e2e.conftest import CHROMIUM_ARGS, PHONE, shoot  # noqa: F401 - skips without Chromium
from tests.server.test_cli import free_port

ROOT = Path(__file__).resolve().parents[2]
PLAYING = (
    "() => { const v = document.getElementById('video');"
    " return v.videoWidth > 0 && v.getVideoPlaybackQuality().totalVideoFrames > 5; }"
)


@contextmanager
def demo(tmp_path: Path, *flags: str) -> Iterator[tuple[dict[str, str], list[str]]]:
    """Run `shopstream demo`; yield the URLs it printed (by label) and its output so far."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "JWT_SECRET", "REDIS_URL")}
    env["ICE_HOST_ADDRESSES"] = "127.0.0.1"
    proc = subprocess.Popen(
        [sys.executable, "-m", "server", "demo", "--data-dir", str(tmp_path / "var"), "--port", str(port), *flags],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(iter(proc.stdout.readline, "")), daemon=True)  # type: ignore[union-attr]
    reader.start()
    try:
        deadline = time.monotonic() + 120
        while not any("health:" in line for line in lines):
            assert proc.poll() is None, "".join(lines)
            assert time.monotonic() < deadline, "the demo printed no URLs in time:\n" + "".join(lines)
            time.sleep(0.2)
        urls = {}
        for line in lines:
            # The banner's rows: "  watch         http://host/live/<id>  (title)".
            if found := re.match(r"\s+(\w[\w ]*?)\s{2,}(http://\S+)", line):
                urls[found.group(1)] = found.group(2)
        yield urls, lines
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
        reader.join(timeout=5)
    assert proc.returncode == 0, "".join(lines[-40:])


def get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=5) as resp:
        return json.loads(resp.read())


async def test_the_printed_viewer_url_shows_live_video_at_once(browser: Any, tmp_path: Path) -> None:
    with demo(tmp_path) as (urls, _):
        watch = urls["watch"]
        base = watch.split("/live/")[0]
        context = await browser.new_context(viewport=PHONE)
        foreign: list[str] = []

        async def guard(route: Any) -> None:
            if not route.request.url.startswith((base, "data:")):
                foreign.append(route.request.url)
                await route.abort()
            else:
                await route.continue_()

        await context.route("**/*", guard)
        try:
            page = await context.new_page()
            started = time.monotonic()
            await page.goto(watch)
            # Nobody broadcast by hand: the built-in publisher is on air.
            await page.wait_for_function(PLAYING, timeout=45_000)
            print(f"demo video playing {time.monotonic() - started:.1f} s after opening the printed URL")
            assert await page.get_attribute("body", "data-stream-state") == "live"
            # The highlighted demo product is on the video, with its generated picture.
            await page.wait_for_selector("#product [data-buy]", timeout=20_000)
            assert await page.evaluate(
                "() => { const i = document.querySelector('#product img'); return !!i && i.complete && i.naturalWidth > 0; }"
            )
            assert await page.locator("#chat li").count() >= 3
            await shoot(page, "demo-phone-live")
            assert foreign == []
        finally:
            await context.close()
        products = get_json(f"{base}/api/v1/products")["items"]
        assert products and all(p["images"] for p in products)


async def test_no_live_leaves_the_demo_show_scheduled(tmp_path: Path) -> None:
    with demo(tmp_path, "--no-live") as (urls, _):
        base = urls["watch"].split("/live/")[0]
        await asyncio.sleep(3)  # what the publisher would need to go live
        assert get_json(f"{base}/api/v1/livestreams?status=live")["items"] == []
        assert len(get_json(f"{base}/api/v1/livestreams?status=upcoming")["items"]) == 1
        # The embedded PostgreSQL has no pg_trgm: search runs on migration 0090's
        # plain-SQL stand-in, with the same prefixes and typos found.
        for q in ("sneak", "snekers", "hodie"):
            titles = [p["title"] for p in get_json(f"{base}/api/v1/products?q={q}")["items"]]
            assert titles[:1] == ["Canvas sneakers" if q != "hodie" else "Limited drop hoodie"], (q, titles)
