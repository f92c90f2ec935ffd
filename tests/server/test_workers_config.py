"""Worker settings: the default count, the clear error without Redis, each worker's ports (#16)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from server.config import ConfigError, Settings


def test_more_than_one_worker_needs_redis() -> None:
    with pytest.raises(ConfigError, match="SHOPSTREAM_WORKERS=2 needs REDIS_URL"):
        Settings.from_env({"SHOPSTREAM_WORKERS": "2"})


def test_default_is_one_worker_without_redis_and_one_per_core_with_it() -> None:
    assert Settings.from_env({}).worker_count == 1
    assert Settings.from_env({"REDIS_URL": "redis://127.0.0.1:6379/0"}).worker_count == (os.cpu_count() or 1)


def test_each_worker_gets_its_own_ice_ports_private_port_and_node_id() -> None:
    env = {"REDIS_URL": "redis://x", "SHOPSTREAM_WORKERS": "3", "ICE_PORT_RANGE": "50000-50008,50100-50102",
           "SHOPSTREAM_PORT": "8080", "PUBLIC_URL": "https://shop.example"}
    workers = [Settings.from_env({**env, "SHOPSTREAM_WORKER_INDEX": str(i)}) for i in range(3)]
    ranges = [w.worker_ice_port_ranges for w in workers]
    assert ranges == [((50000, 50003),), ((50004, 50007),), ((50008, 50008), (50100, 50102))]
    assert [w.worker_port for w in workers] == [8081, 8082, 8083]
    assert [w.cluster_id for w in workers] == ["shop.example/w0", "shop.example/w1", "shop.example/w2"]
    assert workers[1].cluster_url == "http://127.0.0.1:8082"
    alone = Settings.from_env({"REDIS_URL": "redis://x", "SHOPSTREAM_WORKERS": "1", "NODE_ID": "a"})
    assert (alone.worker_port, alone.cluster_id) == (8080, "a")


def test_serve_with_workers_and_no_redis_stops_with_a_clear_error(tmp_path) -> None:  # type: ignore[no-untyped-def]
    env = {k: v for k, v in os.environ.items() if k != "REDIS_URL"}
    proc = subprocess.run(
        [sys.executable, "-c", "from server.cli import main; main()", "serve", "--workers", "2",
         "--data-dir", str(tmp_path)],
        check=False, env=env, capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode != 0
    assert "SHOPSTREAM_WORKERS=2 needs REDIS_URL" in proc.stderr
