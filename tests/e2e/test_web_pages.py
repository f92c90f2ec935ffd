"""The web client's pages in headless Chromium: they load with no console errors and no
request off this machine, the login and signup forms work against the real auth API,
and every page is photographed at desktop and phone size (test-artifacts/screenshots/).
"""

from __future__ import annotations

import secrets
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from tests.e2e.conftest import DESKTOP, PHONE, has_route, session_of, settle, shoot
from tests.factories import Factory, User


async def insert_livestream(factory: Factory, seller: User, *, status: str = "scheduled", title: str = "Friday Night Drop") -> str:
    """Insert a livestream row directly (independent of the livestream endpoints)."""
    conn = await factory.conn()
    return str(await conn.fetchval(
        """INSERT INTO livestreams (seller_id, title, description, status, scheduled_at, stream_key, room)
           VALUES ($1, $2, 'New arrivals, live.', $3, now() + interval '1 hour', $4, $5) RETURNING id""",
        seller.seller_id, title, status, secrets.token_urlsafe(16), secrets.token_hex(8),
    ))


async def test_page_routes_static_files_and_headers(client: TestClient) -> None:
    for path, marker in [("/", "Live now"), ("/login", "Log in"), ("/live/0b5e", 'id="video"'),
                         ("/studio/x", 'id="preview"'), ("/dashboard", "Seller dashboard"),
                         ("/cart", "Your cart"), ("/checkout", "Checkout"), ("/orders", "Your orders")]:
        resp = await client.get(path)
        assert resp.status == 200, path
        assert resp.content_type == "text/html"
        assert marker in await resp.text(), path
        assert resp.headers["Cache-Control"] == "no-cache"
        csp = resp.headers["Content-Security-Policy"]
        assert "default-src 'self'" in csp and "script-src 'self';" in csp  # no CDN, no inline script
    resp = await client.get("/static/js/api.js")
    assert resp.status == 200
    assert "javascript" in resp.content_type
    assert "max-age" in resp.headers["Cache-Control"]
    again = await client.get("/static/js/api.js", headers={"If-Modified-Since": resp.headers["Last-Modified"]})
    assert again.status == 304
    assert (await client.get("/static/css/app.css")).status == 200
    for bad in ("/static/../routes/web.py", "/static/%2e%2e/routes/web.py", "/static/nope.js"):
        assert (await client.get(bad)).status in (403, 404), bad


async def test_config_endpoint_and_openapi_lists_it_but_no_pages(client: TestClient) -> None:
    resp = await client.get("/api/v1/config")
    assert resp.status == 200
    body = await resp.json()
    assert body["paymentProvider"] == "offline"
    assert body["stripePublishableKey"] is None
    assert any(card["number"].replace(" ", "") == "4242424242424242" for card in body["testCards"])
    paths = (await (await client.get("/api/v1/openapi.json")).json())["paths"]
    assert "/api/v1/config" in paths
    assert not any(p in paths for p in ("/", "/login", "/live/{id}", "/studio/{id}"))


@pytest.mark.parametrize("size", ["desktop", "phone"])
async def test_every_page_loads_cleanly_and_is_photographed(
    size: str, new_context: Any, factory: Factory, client: TestClient,
) -> None:
    seller = await factory.seller()
    await factory.product(seller, stock=7, variants=2, title="Canvas sneakers")
    stream_id = await insert_livestream(factory, seller)
    context, watch = await new_context(DESKTOP if size == "desktop" else PHONE, session_of(seller, "Maya"))
    pages = {
        "home": "/", "login": "/login", "live": f"/live/{stream_id}", "studio": f"/studio/{stream_id}",
        "dashboard": "/dashboard", "cart": "/cart", "checkout": "/checkout", "orders": "/orders",
    }
    for name, path in pages.items():
        page = await context.new_page()
        await page.goto(path)
        await settle(page)
        assert await page.locator("h1").count() >= 1, name
        assert await page.title(), name
        if name == "studio" and has_route(client.server.app, f"/api/v1/livestreams/{stream_id}"):
            # The fake camera plays in the preview (once the stream can be loaded).
            await page.wait_for_function(
                "() => document.getElementById('preview').videoWidth > 0", timeout=10_000
            )
        await shoot(page, f"{name}-{size}")
        await page.close()
    assert watch.foreign == [], watch.foreign
    assert watch.real_errors() == [], watch.real_errors()


async def test_signup_logout_and_login_through_the_forms(new_context: Any, factory: Factory) -> None:
    context, watch = await new_context(PHONE)
    page = await context.new_page()
    email = f"shopper-{secrets.token_hex(4)}@example.test"

    await page.goto("/login?next=/orders")
    await page.fill("#signup-name", "Sam Shopper")
    await page.fill("#signup-email", email)
    await page.fill("#signup-password", "short")
    await page.click("#signup-form button[type=submit]")
    await page.wait_for_selector("#signup-status.error")
    assert "at least 8 characters" in (await page.text_content("#signup-status") or "")

    await page.fill("#signup-password", "correct horse battery")
    await page.click("#signup-form button[type=submit]")
    await page.wait_for_url("**/orders")
    await page.wait_for_selector("[data-username]")
    assert await page.text_content("[data-username]") == "Sam Shopper"

    await page.click("text=Log out")
    await page.wait_for_url(lambda url: url.endswith("/"))
    await page.wait_for_selector("text=Log in / Sign up")
    assert await page.evaluate("localStorage.getItem('shopstream.session')") is None

    await page.goto("/login")
    await page.fill("#login-email", email)
    await page.fill("#login-password", "wrong password!")
    await page.press("#login-password", "Enter")  # keyboard submit
    await page.wait_for_selector("#login-status.error")
    assert "Wrong email or password" in (await page.text_content("#login-status") or "")

    await page.fill("#login-password", "correct horse battery")
    await page.press("#login-password", "Enter")
    await page.wait_for_url(lambda url: url.endswith("/"))
    await page.wait_for_selector("[data-username]")
    session = await page.evaluate("JSON.parse(localStorage.getItem('shopstream.session'))")
    assert session["user"]["email"] == email and session["refreshToken"]
    assert watch.foreign == []
    # The 401 of the wrong password is the one expected failed load.
    assert [e for e in watch.real_errors() if "401" not in e] == []


async def test_refresh_token_rotation_on_expired_access_token(new_context: Any, factory: Factory) -> None:
    user = await factory.user()
    stale = session_of(user, "Sam") | {"accessToken": "expired.token.value"}
    context, watch = await new_context(DESKTOP, stale)
    page = await context.new_page()
    await page.goto("/orders")
    await settle(page)
    me = await page.evaluate("""async () => {
        const { api } = await import('/static/js/api.js');
        return api('/api/v1/me');
    }""")
    assert me["id"] == user.id
    session = await page.evaluate("JSON.parse(localStorage.getItem('shopstream.session'))")
    assert session["accessToken"] != "expired.token.value"
    assert session["refreshToken"] != user.refresh_token  # rotated
    assert watch.foreign == []


async def test_keyboard_reaches_skip_link_and_main_navigation(new_context: Any) -> None:
    context, _ = await new_context(PHONE)
    page = await context.new_page()
    await page.goto("/")
    await page.keyboard.press("Tab")
    assert await page.evaluate("document.activeElement.className") == "skip"
    await page.keyboard.press("Tab")
    assert await page.evaluate("document.activeElement.textContent") == "Kein Shopstream"
    outline = await page.evaluate("getComputedStyle(document.activeElement).outlineStyle")
    assert outline == "solid"
