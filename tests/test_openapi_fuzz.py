"""Fuzz every documented operation over real HTTP with schemathesis.

The app runs on a real TCP port on 127.0.0.1 (aiohttp's TestServer, on the test's
loop); schemathesis and hypothesis are synchronous, so they run in a worker thread
while the loop keeps serving. The caller is an admin who also sells, so user, seller
and admin routes are all exercised; half of the cases address real ids (the caller's
own product, variant, seller) so that handlers get past their 404s.

Checks: no 5xx (`not_a_server_error`) and every response matches its documented schema
(`response_schema_conformance`). Every failing operation is reported, not just the first.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

import hypothesis
import hypothesis.errors
import schemathesis
from hypothesis import HealthCheck, Phase
from hypothesis import strategies as st
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import response_schema_conformance

from tests.factories import Factory

@schemathesis.serializer("application/sdp")
def _sdp_body(ctx: Any, value: Any) -> dict[str, Any]:
    """Send generated WHIP/WHEP bodies as they are: SDP is text."""
    return {"data": value if isinstance(value, bytes) else str(value).encode("utf-8", "surrogatepass")}


POSITIVE_EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "15"))
NEGATIVE_EXAMPLES = max(1, POSITIVE_EXAMPLES // 2)


def _known_ids(path: str, ids: dict[str, str]) -> dict[str, str]:
    """Return real path parameters for an operation (empty when none apply)."""
    known: dict[str, str] = {}
    if "{id}" in path:
        if path.startswith("/api/v1/products/") or path.startswith("/api/v1/seller/products/"):
            known["id"] = ids["product"]
        elif path.startswith("/api/v1/admin/sellers/"):
            known["id"] = ids["seller"]
        elif path.startswith("/api/v1/me/addresses/"):
            known["id"] = ids["address"]
    if "{variantId}" in path:
        known["variantId"] = ids["variant"]
    if "{productId}" in path:
        known["productId"] = ids["product"]
    return known


def _run_cases(strategy: Any, examples: int, checks: list[Any], base_url: str, headers: dict[str, str]) -> None:
    """Send `examples` generated cases and run `checks` on each response."""

    @hypothesis.given(case=strategy)
    @hypothesis.settings(
        max_examples=examples, deadline=None, database=None, derandomize=True,
        phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck),
    )
    def run(case: Any) -> None:
        case.call_and_validate(base_url=base_url, headers=headers, checks=checks, timeout=20)

    run()


def _fuzz(base_url: str, headers: dict[str, str], ids: dict[str, str]) -> list[str]:
    schema = schemathesis.openapi.from_url(f"{base_url}/api/v1/openapi.json")
    failures: list[str] = []
    for result in schema.get_all_operations():
        operation = result.ok()
        known = _known_ids(operation.path, ids)
        for mode, examples, checks in (
            (schemathesis.GenerationMode.POSITIVE, POSITIVE_EXAMPLES,
             [not_a_server_error, response_schema_conformance]),
            (schemathesis.GenerationMode.NEGATIVE, NEGATIVE_EXAMPLES, [not_a_server_error]),
        ):
            strategy = operation.as_strategy(generation_mode=mode)
            if known:
                strategy = st.one_of(strategy, operation.as_strategy(generation_mode=mode, path_parameters=known))

            try:
                _run_cases(strategy, examples, checks, base_url, headers)
            except hypothesis.errors.Unsatisfiable:
                pass  # negative mode: an operation without inputs has nothing to break
            # schemathesis reports check failures as an exception group.
            except (Exception, BaseExceptionGroup) as exc:  # noqa: BLE001 - collect them all
                failures.append(f"{operation.label} [{mode.value}]: {exc}")
    return failures


async def test_every_operation_survives_fuzzing(client, factory: Factory) -> None:
    caller = await factory.seller()
    conn = await factory.conn()
    await conn.execute("UPDATE profiles SET role = 'admin' WHERE id = $1", caller.id)
    login = await client.post("/api/v1/auth/login", json={"email": caller.email, "password": caller.password})
    token = (await login.json())["accessToken"]
    product = await factory.product(caller, variants=2, stock=1000)
    other = await factory.seller()
    await factory.product(other, status="draft")
    await factory.category("fashion")
    address = await client.post(
        "/api/v1/me/addresses", headers={"Authorization": f"Bearer {token}"},
        json={"line1": "1 Main St", "city": "Springfield", "postalCode": "12345", "country": "US"},
    )
    ids = {
        "product": product["id"], "variant": product["variantIds"][0],
        "seller": caller.seller_id or "", "address": (await address.json())["id"],
    }
    base_url = str(client.make_url("")).rstrip("/")
    failures = await asyncio.to_thread(_fuzz, base_url, {"Authorization": f"Bearer {token}"}, ids)
    assert not failures, "\n\n".join(failures)
