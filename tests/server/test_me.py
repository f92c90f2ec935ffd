"""Profile, addresses and becoming a seller; mass assignment is refused."""

from __future__ import annotations

from tests.factories import Factory

ADDRESS = {"line1": "1 Main St", "city": "Springfield", "postalCode": "12345", "country": "US"}


async def test_patch_me_refuses_role_and_id(client, factory: Factory) -> None:
    user = await factory.user()
    for body in ({"role": "admin"}, {"id": "00000000-0000-0000-0000-000000000000"}, {"email": "x@y.zz"}):
        resp = await client.patch("/api/v1/me", json=body, headers=user.headers)
        assert resp.status == 400, body
    resp = await client.patch("/api/v1/me", json={"name": "New Name"}, headers=user.headers)
    assert resp.status == 200
    me = await resp.json()
    assert me["name"] == "New Name" and me["role"] == "user"


async def test_address_crud_and_foreign_address_is_404(client, factory: Factory) -> None:
    alice, bob = await factory.user(), await factory.user()
    resp = await client.post("/api/v1/me/addresses", json=ADDRESS, headers=alice.headers)
    assert resp.status == 201
    address = await resp.json()
    assert address["postalCode"] == "12345"

    resp = await client.patch(f"/api/v1/me/addresses/{address['id']}", json={"city": "Shelbyville"}, headers=alice.headers)
    assert resp.status == 200 and (await resp.json())["city"] == "Shelbyville"

    # Bob can neither read, change nor delete Alice's address.
    resp = await client.get("/api/v1/me/addresses", headers=bob.headers)
    assert (await resp.json())["items"] == []
    resp = await client.patch(f"/api/v1/me/addresses/{address['id']}", json={"city": "X"}, headers=bob.headers)
    assert resp.status == 404
    resp = await client.delete(f"/api/v1/me/addresses/{address['id']}", headers=bob.headers)
    assert resp.status == 404
    resp = await client.delete("/api/v1/me/addresses/not-a-uuid", headers=bob.headers)
    assert resp.status == 404

    resp = await client.delete(f"/api/v1/me/addresses/{address['id']}", headers=alice.headers)
    assert resp.status == 204
    resp = await client.get("/api/v1/me/addresses", headers=alice.headers)
    assert (await resp.json())["items"] == []


async def test_address_validation(client, factory: Factory) -> None:
    user = await factory.user()
    resp = await client.post(
        "/api/v1/me/addresses", json={**ADDRESS, "country": "usa", "userId": "x"}, headers=user.headers
    )
    assert resp.status == 400
    fields = (await resp.json())["error"]["details"]["fields"]
    assert "country" in fields and "userId" in fields


async def test_become_seller_once(client, factory: Factory) -> None:
    user = await factory.user()
    resp = await client.post("/api/v1/me/seller", json={"displayName": "My Shop", "bio": "hi"}, headers=user.headers)
    assert resp.status == 201
    data = await resp.json()
    assert data["profile"]["role"] == "seller"
    assert data["profile"]["seller"]["kycStatus"] == "pending"
    headers = {"Authorization": f"Bearer {data['accessToken']}"}
    resp = await client.post("/api/v1/me/seller", json={"displayName": "Again"}, headers=headers)
    assert resp.status == 409
    # A user cannot make themselves verified or choose their own kyc status.
    other = await factory.user()
    resp = await client.post(
        "/api/v1/me/seller", json={"displayName": "S", "kycStatus": "verified"}, headers=other.headers
    )
    assert resp.status == 400
