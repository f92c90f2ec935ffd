"""The web client: page routes, static files and the config endpoint the pages read.

The pages are plain HTML + CSS + ES modules under `server/web/` (no build step). Every
byte a page loads comes from this server: the Content-Security-Policy says so, with one
exception the operator opts into: Stripe's Payment Element, which Stripe only serves
from js.stripe.com, is allowed when a Stripe key is configured.

Page routes are not part of the API, so they are registered by `setup(app)` rather than
declared with `Api` (the OpenAPI document lists only the API). `GET /api/v1/config` is
an API route like any other.
"""

from __future__ import annotations

from pathlib import Path

from aiohttp import web

from server.api import Api, json_response
from server.keys import PAYMENTS, SETTINGS

api = Api()

WEB_DIR = Path(__file__).resolve().parent.parent / "web"

# Path -> HTML file. `{id}` pages read the id from location.pathname.
PAGES = {
    "/": "index.html",
    "/login": "login.html",
    "/live/{id}": "live.html",
    "/studio/{id}": "studio.html",
    "/dashboard": "dashboard.html",
    "/cart": "cart.html",
    "/checkout": "checkout.html",
    "/orders": "orders.html",
}

# Stripe's published test numbers; the offline provider honours the same ones (any
# other Luhn-valid number succeeds there too).
DEFAULT_TEST_CARDS = (
    {"number": "4242 4242 4242 4242", "outcome": "succeeds"},
    {"number": "4000 0000 0000 0002", "outcome": "is declined"},
    {"number": "4000 0000 0000 9995", "outcome": "is declined (insufficient funds)"},
)

CONFIG = {
    "type": "object",
    "required": ["paymentProvider", "stripePublishableKey", "testCards"],
    "properties": {
        "paymentProvider": {"enum": ["offline", "stripe"]},
        "stripePublishableKey": {"type": ["string", "null"]},
        "testCards": {
            "type": "array",
            "items": {
                "type": "object", "required": ["number", "outcome"],
                "properties": {"number": {"type": "string"}, "outcome": {"type": "string"}},
            },
        },
    },
}


def _stripe_enabled(app: web.Application) -> bool:
    # The same rule the payments subsystem uses to pick its provider.
    return bool(app[SETTINGS].stripe_secret_key)


@api.route(
    "GET", "/api/v1/config", summary="Client configuration: payment provider and public keys",
    tags=("web",), response=CONFIG,
)
async def client_config(request: web.Request) -> web.Response:
    if _stripe_enabled(request.app):
        return json_response({
            "paymentProvider": "stripe",
            "stripePublishableKey": request.app[SETTINGS].stripe_publishable_key or None,
            "testCards": [],
        })
    # The payments subsystem may publish its own list; the default is Stripe's numbers.
    cards = getattr(request.app.get(PAYMENTS), "test_cards", None) or DEFAULT_TEST_CARDS
    return json_response({
        "paymentProvider": "offline", "stripePublishableKey": None, "testCards": list(cards),
    })


def content_security_policy(stripe: bool) -> str:
    """Return the pages' CSP: our own origin only (plus Stripe's hosts when enabled)."""
    script = "'self' https://js.stripe.com" if stripe else "'self'"
    frame = "https://js.stripe.com https://hooks.stripe.com" if stripe else "'none'"
    connect = "'self' https://api.stripe.com" if stripe else "'self'"
    return (
        f"default-src 'self'; script-src {script}; style-src 'self'; img-src 'self' data: blob:; "
        f"media-src 'self' blob:; connect-src {connect}; frame-src {frame}; "
        "object-src 'none'; base-uri 'self'; form-action 'self'; frame-ancestors 'none'"
    )


def _page_handler(file: Path) -> web.RequestHandler:
    async def page(request: web.Request) -> web.StreamResponse:
        return web.FileResponse(file)

    return page


async def _cache_headers(request: web.Request, response: web.StreamResponse) -> None:
    """Ask browsers to revalidate pages and modules (no build step, so no hashed names)."""
    path = request.path
    if path.startswith("/static/"):
        # Unversioned file names: a short freshness window, then a cheap 304 revalidation.
        response.headers.setdefault("Cache-Control", "public, max-age=60, must-revalidate")
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
    elif response.content_type == "text/html":
        response.headers["Cache-Control"] = "no-cache"
        response.headers["Content-Security-Policy"] = content_security_policy(
            _stripe_enabled(request.app)
        )
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["Referrer-Policy"] = "same-origin"
        # Camera and microphone are for the studio only.
        response.headers["Permissions-Policy"] = "camera=(self), microphone=(self), geolocation=()"


def setup(app: web.Application) -> None:
    """Register the page routes and `/static/` (call after the API routes)."""
    for path, name in PAGES.items():
        app.router.add_get(path, _page_handler(WEB_DIR / name), name="page_" + name.removesuffix(".html"))
    app.router.add_static("/static/", WEB_DIR, name="static", append_version=False)
    app.on_response_prepare.append(_cache_headers)
