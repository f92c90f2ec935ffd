"""What `shopstream demo` prints: access logs only on request, failures with their log."""

from __future__ import annotations

import json
import secrets
import subprocess
from pathlib import Path

import asyncpg
import pytest

from tests.conftest import _with_database
from tests.deploy.conftest import InstalledWheel, clean_env, free_port
from tests.deploy.test_wheel import get, stop, wait_ready

pytestmark = pytest.mark.deploy


@pytest.mark.parametrize("how", ["flag", "env"])
async def test_demo_logs_requests_only_when_asked(
    how: str, installed_wheel: InstalledWheel, admin_dsn: str, tmp_path: Path,
) -> None:
    name = f"shopstream_out_{secrets.token_hex(4)}"
    admin = await asyncpg.connect(admin_dsn)
    await admin.execute(f'CREATE DATABASE "{name}"')
    port = free_port()
    args = [installed_wheel.shopstream, "demo", "--port", str(port),
            "--database-url", _with_database(admin_dsn, name)]
    env = clean_env()
    if how == "flag":
        args.append("--access-log")
    else:
        env["LOG_REQUESTS"] = "1"
    log = tmp_path / "demo.log"
    try:
        with log.open("w") as out:
            proc = subprocess.Popen(args, cwd=tmp_path, env=env, stdout=out,
                                    stderr=subprocess.STDOUT, text=True)
        try:
            wait_ready(f"http://127.0.0.1:{port}/readyz", proc, log)
            assert get(f"http://127.0.0.1:{port}/api/v1/livestreams")[0] == 200
        finally:
            assert stop(proc) == 0, log.read_text()
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()
    access = [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]
    assert any(entry["route"] == "/api/v1/livestreams" and entry["status"] == 200 for entry in access)


def test_a_failing_embedded_database_shows_its_log(installed_wheel: InstalledWheel, tmp_path: Path) -> None:
    # A data folder that claims to hold a cluster but has no configuration: pg_ctl fails.
    (tmp_path / "var" / "pg").mkdir(parents=True)
    (tmp_path / "var" / "pg" / "PG_VERSION").write_text("16\n")
    done = subprocess.run(
        [installed_wheel.shopstream, "demo", "--port", str(free_port())],
        cwd=tmp_path, env=clean_env(), capture_output=True, text=True, timeout=120,
    )
    assert done.returncode != 0
    assert "embedded PostgreSQL" in done.stderr and "did not start" in done.stderr
    assert "embedded-postgres.log" in done.stderr
    # PostgreSQL's own reason is in the tail shown.
    assert "postgresql.conf" in done.stderr
    assert "Traceback" not in done.stderr
