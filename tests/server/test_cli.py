"""The `shopstream` command as an operator runs it: demo on the embedded database, migrate."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get_json(url: str) -> tuple[int, dict]:
    with urllib.request.urlopen(url, timeout=5) as resp:
        return resp.status, json.loads(resp.read())


def test_demo_runs_on_the_embedded_database_and_stops_it(tmp_path: Path) -> None:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "JWT_SECRET", "REDIS_URL")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "server", "demo", "--data-dir", str(tmp_path / "var"), "--port", str(port)],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                status, body = get_json(f"http://127.0.0.1:{port}/healthz")
                break
            except OSError:
                assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
                assert time.monotonic() < deadline, "demo did not answer /healthz in time"
                time.sleep(0.3)
        assert status == 200 and body == {"status": "ok"}
        assert get_json(f"http://127.0.0.1:{port}/readyz")[0] == 200
        # The generated JWT secret is kept in the data folder, never printed.
        secret = (tmp_path / "var" / "jwt_secret").read_text().strip()
        assert len(secret) >= 32
    finally:
        proc.send_signal(signal.SIGTERM)
        output, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, output
    assert "seller@demo.shopstream.test" in output and "stream key" in output
    assert secret not in output
    # The embedded PostgreSQL was stopped with the server.
    assert not (tmp_path / "var" / "pg" / "postmaster.pid").exists()


def test_migrate_command_against_a_database_url(database_dsn: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "server", "migrate", "--database-url", database_dsn],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert "none pending" in result.stdout
