"""Wishlist: idempotent add/remove, only public products, private to its owner."""

from __future__ import annotations

from tests.factories import Factory


async def test_add_is_idempotent_and_list_is_latest_first(client, factory: Factory) -> None:
    seller, user = await factory.seller(), await factory.user()
    first, second = await factory.product(seller), await factory.product(seller)
    for product in (first, second, first):
        resp = await client.post(f"/api/v1/me/wishlist/{product['id']}", headers=user.headers)
        assert resp.status == 204
    body = await (await client.get("/api/v1/me/wishlist", headers=user.headers)).json()
    assert [i["productId"] for i in body["items"]] == [second["id"], first["id"]]
    assert body["items"][0]["product"]["variants"][0]["stock"] == 10
    assert body["nextCursor"] is None


async def test_remove_is_idempotent(client, factory: Factory) -> None:
    seller, user = await factory.seller(), await factory.user()
    product = await factory.product(seller)
    await client.post(f"/api/v1/me/wishlist/{product['id']}", headers=user.headers)
    for _ in range(2):
        resp = await client.delete(f"/api/v1/me/wishlist/{product['id']}", headers=user.headers)
        assert resp.status == 204
    assert (await (await client.get("/api/v1/me/wishlist", headers=user.headers)).json())["items"] == []


async def test_unknown_or_private_products_are_404(client, factory: Factory) -> None:
    seller, user = await factory.seller(), await factory.user()
    draft = await factory.product(seller, status="draft")
    for product_id in (draft["id"], "00000000-0000-0000-0000-000000000000", "junk"):
        assert (await client.post(f"/api/v1/me/wishlist/{product_id}", headers=user.headers)).status == 404
        assert (await client.delete(f"/api/v1/me/wishlist/{product_id}", headers=user.headers)).status == 404


async def test_archived_products_drop_out_and_lists_are_private(client, factory: Factory) -> None:
    seller, alice, bob = await factory.seller(), await factory.user(), await factory.user()
    product = await factory.product(seller)
    await client.post(f"/api/v1/me/wishlist/{product['id']}", headers=alice.headers)
    assert (await (await client.get("/api/v1/me/wishlist", headers=bob.headers)).json())["items"] == []
    conn = await factory.conn()
    await conn.execute("UPDATE products SET status = 'archived' WHERE id = $1", product["id"])
    assert (await (await client.get("/api/v1/me/wishlist", headers=alice.headers)).json())["items"] == []
    # Still removable after it went private.
    assert (await client.delete(f"/api/v1/me/wishlist/{product['id']}", headers=alice.headers)).status == 204
    assert (await client.get("/api/v1/me/wishlist")).status == 401


async def test_wishlist_pages(client, factory: Factory) -> None:
    seller, user = await factory.seller(), await factory.user()
    made = [(await factory.product(seller))["id"] for _ in range(7)]
    for product_id in made:
        await client.post(f"/api/v1/me/wishlist/{product_id}", headers=user.headers)
    seen, cursor = [], None
    while True:
        params = {"limit": "3", **({"cursor": cursor} if cursor else {})}
        page = await (await client.get("/api/v1/me/wishlist", params=params, headers=user.headers)).json()
        seen += [i["productId"] for i in page["items"]]
        cursor = page["nextCursor"]
        if cursor is None:
            break
    assert seen == list(reversed(made))
