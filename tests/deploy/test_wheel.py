"""The built wheel, installed non-editable into a fresh venv, runs from an empty folder.

Reproduces issue 15: a non-editable install lacked sql/migrations and the load-test
scenarios, applied no migration and failed on its first query.
"""

from __future__ import annotations

import json
import secrets
import signal
import subprocess
import time
import urllib.request
import zipfile
from pathlib import Path

import asyncpg
import pytest

from server.db import MigrationError, load_migrations
from tests.conftest import _with_database
from tests.deploy.conftest import ROOT, InstalledWheel, clean_env, free_port

pytestmark = pytest.mark.deploy


def get(url: str) -> tuple[int, bytes]:
    with urllib.request.urlopen(url, timeout=5) as resp:
        return resp.status, resp.read()


def wait_ready(url: str, proc: subprocess.Popen[str], log: Path, timeout: float = 180) -> None:
    """Wait for a 200 from `url`, failing with the process output if it exits first."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if get(url)[0] == 200:
                return
        except OSError:
            pass
        assert proc.poll() is None, f"exited with {proc.returncode}:\n{log.read_text()}"
        assert time.monotonic() < deadline, f"no 200 from {url}:\n{log.read_text()}"
        time.sleep(0.3)


def stop(proc: subprocess.Popen[str]) -> int:
    proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait()


def test_the_wheel_carries_migrations_scenarios_and_web_files(built_wheel: Path) -> None:
    names = set(zipfile.ZipFile(built_wheel).namelist())
    expected = [
        *(f"sql/migrations/{p.name}" for p in (ROOT / "sql" / "migrations").glob("*.sql")),
        *(f"benchmarks/scenarios/{p.name}" for p in (ROOT / "benchmarks" / "scenarios").iterdir()),
        *(str(p.relative_to(ROOT)) for p in (ROOT / "server" / "web").rglob("*") if p.is_file()),
    ]
    assert len(expected) > 20
    assert sorted(set(expected) - names) == []
    # Nothing of a developer's tree rides along.
    assert not [n for n in names if n.startswith(("tests/", "var/", ".venv/"))]


def test_the_runner_refuses_to_start_without_migrations(tmp_path: Path) -> None:
    with pytest.raises(MigrationError, match="no migrations found"):
        load_migrations(tmp_path)


def test_installed_code_comes_from_the_wheel(installed_wheel: InstalledWheel, tmp_path: Path) -> None:
    out = subprocess.run(
        [installed_wheel.python, "-c", "import server, sql, benchmarks; print(server.__file__, sql.__file__)"],
        cwd=tmp_path, env=clean_env(), check=True, capture_output=True, text=True,
    )
    site = str(installed_wheel.site_packages())
    assert all(path.startswith(site) for path in out.stdout.split()), out.stdout


async def test_installed_migrate_applies_every_migration(
    installed_wheel: InstalledWheel, admin_dsn: str, tmp_path: Path,
) -> None:
    name = f"shopstream_wheel_{secrets.token_hex(4)}"
    admin = await asyncpg.connect(admin_dsn)
    await admin.execute(f'CREATE DATABASE "{name}"')
    try:
        dsn = _with_database(admin_dsn, name)
        done = subprocess.run(
            [installed_wheel.shopstream, "migrate", "--database-url", dsn],
            cwd=tmp_path, env=clean_env(), capture_output=True, text=True, timeout=300,
        )
        assert done.returncode == 0, done.stdout + done.stderr
        conn = await asyncpg.connect(dsn)
        try:
            versions = [r["version"] for r in await conn.fetch(
                "SELECT version FROM schema_migrations ORDER BY version")]
            assert await conn.fetchval("SELECT to_regclass('inventory_events') IS NOT NULL")
        finally:
            await conn.close()
        assert versions == [m.version for m in load_migrations()]
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


def test_installed_demo_runs_from_an_empty_folder(installed_wheel: InstalledWheel, tmp_path: Path) -> None:
    """`shopstream demo` with nothing but the wheel: embedded PostgreSQL, schema, seed, /readyz."""
    workdir = tmp_path / "empty"
    workdir.mkdir()
    port = free_port()
    log = tmp_path / "demo.log"
    with log.open("w") as out:
        proc = subprocess.Popen(
            [installed_wheel.shopstream, "demo", "--port", str(port)],
            cwd=workdir, env=clean_env(), stdout=out, stderr=subprocess.STDOUT, text=True,
        )
    try:
        wait_ready(f"http://127.0.0.1:{port}/readyz", proc, log)
        # The seeded livestream is readable: the schema was applied and the seed ran.
        status, body = get(f"http://127.0.0.1:{port}/api/v1/livestreams")
        assert status == 200 and json.loads(body)["items"], body
        status, page = get(f"http://127.0.0.1:{port}/")
        assert status == 200 and b"<html" in page.lower()
    finally:
        code = stop(proc)
    output = log.read_text()
    assert code == 0, output
    # Everything the demo keeps lives in the folder it was started from.
    assert (workdir / "var" / "jwt_secret").exists()
    assert_quiet_demo_output(output, workdir / "var")


def assert_quiet_demo_output(output: str, data_dir: Path) -> None:
    """One short line, then one banner; PostgreSQL's chatter is in a file; no access log."""
    lines = output.splitlines()
    banner = next(i for i, line in enumerate(lines) if "demo listening on http://" in line)
    assert banner <= 2, output
    assert "DEMO ONLY" in output and "seller@demo.shopstream.test" in output
    for noise in ("initdb", "pg_ctl", "PostmasterInfo", "Running commandline", "RuntimeDirWarning",
                  "applied migration", '"method"'):
        assert noise not in output, f"{noise!r} printed:\n{output}"
    assert len(lines) < 25, output
    pg_log = (data_dir / "embedded-postgres.log").read_text()
    assert "initdb" in pg_log and "pg_ctl" in pg_log


def test_installed_loadtest_finds_its_scenarios(installed_wheel: InstalledWheel, tmp_path: Path) -> None:
    env = clean_env()
    helped = subprocess.run([installed_wheel.shopstream, "loadtest", "--help"],
                            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert helped.returncode == 0 and "--scenario" in helped.stdout, helped.stderr
    # A ready scenario loads by name from the installed package (no source checkout here).
    code = (
        "from benchmarks.loadtest import parser; from benchmarks.scenario import from_arguments;"
        "s = from_arguments(parser().parse_args(['--scenario', 'smoke'])); print(s.name, s.results_dir)"
    )
    loaded = subprocess.run([installed_wheel.python, "-c", code], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=120)
    assert loaded.returncode == 0, loaded.stderr
    name, results_dir = loaded.stdout.split()
    assert name == "smoke"
    # Results go to the working folder, never into the (read-only) installed package.
    assert results_dir == "loadtest-results"
    # A missing scenario is a clear error, not a traceback.
    missing = subprocess.run([installed_wheel.shopstream, "loadtest", "--scenario", "nope"],
                             cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert missing.returncode == 2 and "scenario error" in missing.stderr
    assert "Traceback" not in missing.stderr
