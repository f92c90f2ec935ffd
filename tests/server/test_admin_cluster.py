"""GET /api/v1/admin/cluster on a server alone (no Redis): itself as the only node (#16)."""

from __future__ import annotations

from tests.factories import Factory


async def test_cluster_view_alone_is_this_server_and_admin_only(client, factory: Factory) -> None:  # type: ignore[no-untyped-def]
    admin, user = await factory.admin(), await factory.user()
    assert (await client.get("/api/v1/admin/cluster", headers=user.headers)).status == 403
    assert (await client.get("/api/v1/admin/cluster")).status == 401
    resp = await client.get("/api/v1/admin/cluster", headers=admin.headers)
    body = await resp.json()
    assert resp.status == 200, body
    assert body["connected"] is False and body["node"] == "local"
    assert [n["id"] for n in body["nodes"]] == ["local"] and body["rooms"] == []
