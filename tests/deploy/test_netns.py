"""The server across real network boundaries: 1:1 NAT, UDP-blocking viewers, a firewall.

Network namespaces made here (tests/deploy/netns.py) hold the server (behind a 1:1 NAT
in `rtr`, its firewall open only for HTTP and ICE_PORT_RANGE), coturn, a publisher and
viewers; aiortc peers run in them as `ip netns exec` subprocesses. The server reaches
PostgreSQL through its unix socket, which namespaces do not isolate.
"""

from __future__ import annotations

import json
import re
import secrets
import shutil
import subprocess
import sys
import time
import urllib.parse
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from tests.conftest import _with_database
from tests.deploy import netns
from tests.deploy.conftest import ROOT, clean_env

pytestmark = pytest.mark.deploy

REASON = netns.unavailable()
if REASON:
    pytest.skip(REASON, allow_module_level=True)

PORTS = (50000, 50039)  # publisher + 1 + 1 + 20 viewers fit, with room to spare
HTTP = 8080
BASE = f"http://{netns.PUBLIC_SERVER}:{HTTP}"
TURN_SECRET = secrets.token_urlsafe(24)
TURN_PORT = 3478
CANDIDATE = re.compile(r"^a=candidate:\S+ \d+ udp \d+ (\S+) (\d+) typ (\S+)", re.MULTILINE)


def socket_dsn(admin_dsn: str) -> str | None:
    """Return `admin_dsn` over a unix socket (reachable from any namespace), or None."""
    parts = urllib.parse.urlsplit(admin_dsn)
    query = urllib.parse.parse_qs(parts.query)
    if "host" in query and query["host"][0].startswith("/"):
        return admin_dsn
    if parts.hostname not in ("127.0.0.1", "localhost", "::1"):
        return None
    port = parts.port or 5432
    for directory in ("/var/run/postgresql", "/run/postgresql", "/tmp"):
        if Path(directory, f".s.PGSQL.{port}").exists():
            user = urllib.parse.quote(parts.username or "postgres")
            password = f":{urllib.parse.quote(parts.password)}" if parts.password else ""
            return f"postgresql://{user}{password}@{parts.path}?host={directory}&port={port}"
    return None


def in_ns(lab: netns.Lab, leaf: str, code: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    """Run a Python snippet inside `leaf`'s namespace."""
    return subprocess.run([*lab.exec_args(leaf), sys.executable, "-c", code], capture_output=True,
                          text=True, timeout=timeout)


def wait_tcp(lab: netns.Lab, leaf: str, host: str, port: int, proc: subprocess.Popen[str],
             log: Path, timeout: float = 120) -> None:
    code = (f"import socket; socket.create_connection(({host!r}, {port}), timeout=2).close()")
    deadline = time.monotonic() + timeout
    while in_ns(lab, leaf, code).returncode != 0:
        assert proc.poll() is None, f"exited with {proc.returncode}:\n{log.read_text()}"
        assert time.monotonic() < deadline, f"{host}:{port} not reachable from {leaf}:\n{log.read_text()}"
        time.sleep(0.5)


def stop(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="module")
def lab() -> Iterator[netns.Lab]:
    network = netns.Lab()
    try:
        yield network.up()
    finally:
        network.close()
    assert not [ns for ns in subprocess.run(["ip", "netns", "list"], capture_output=True,
                                            text=True).stdout.split() if ns.startswith(network.prefix)]


@pytest.fixture(scope="module")
async def lab_database(admin_dsn: str) -> AsyncIterator[str]:
    dsn = socket_dsn(admin_dsn)
    if dsn is None:
        pytest.skip("the namespaced server needs PostgreSQL on a unix socket; none for TEST_DATABASE_URL")
    name = f"shopstream_netns_{secrets.token_hex(4)}"
    admin = await asyncpg.connect(admin_dsn)
    await admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield _with_database(dsn, name)
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


@pytest.fixture(scope="module")
def turn_server(lab: netns.Lab, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Run coturn in `turn` with use-auth-secret; yield its TURN-over-TCP URL."""
    binary = shutil.which("turnserver")
    if binary is None:
        pytest.skip("coturn's turnserver not found (apt-get install coturn; scripts/test.sh does)")
    folder = tmp_path_factory.mktemp("coturn")
    ip = netns.address("turn")
    (folder / "turnserver.conf").write_text(f"""
listening-ip={ip}
relay-ip={ip}
listening-port={TURN_PORT}
min-port=49152
max-port=49999
use-auth-secret
static-auth-secret={TURN_SECRET}
realm=shopstream.test
fingerprint
no-tls
no-dtls
no-cli
no-multicast-peers
userdb={folder / "turndb"}
pidfile={folder / "turnserver.pid"}
log-file={folder / "turn.log"}
simple-log
""")
    log = folder / "stdout.log"
    with log.open("w") as out:
        proc = lab.popen("turn", [binary, "-c", str(folder / "turnserver.conf")], stdout=out,
                         stderr=subprocess.STDOUT)
    try:
        wait_tcp(lab, "pub", ip, TURN_PORT, proc, log)
        yield f"turn:{ip}:{TURN_PORT}?transport=tcp"
    finally:
        stop(proc)


@pytest.fixture(scope="module")
async def show(lab: netns.Lab, lab_database: str, turn_server: str,
               tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[dict[str, Any]]:
    """The server in `srv` (NAT, firewall, port range, TURN) with a live publisher in `pub`."""
    folder = tmp_path_factory.mktemp("server")
    env = clean_env(
        DATABASE_URL=lab_database, JWT_SECRET=secrets.token_urlsafe(48), LOG_REQUESTS="0",
        SHOPSTREAM_DATA_DIR=str(folder / "var"), ICE_HOST_ADDRESSES=netns.address("srv"),
        ICE_ANNOUNCED_ADDRESSES=netns.PUBLIC_SERVER, ICE_PORT_RANGE=f"{PORTS[0]}-{PORTS[1]}",
        TURN_URLS=turn_server, TURN_SECRET=TURN_SECRET, PYTHONPATH=str(ROOT),
    )
    seeded = subprocess.run([sys.executable, "-m", "server", "seed", "--database-url", lab_database,
                             "--data-dir", str(folder / "var")],
                            cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert seeded.returncode == 0, seeded.stderr
    conn = await asyncpg.connect(lab_database)
    try:
        row = await conn.fetchrow("SELECT id::text, stream_key FROM livestreams ORDER BY title LIMIT 1")
    finally:
        await conn.close()
    # Only HTTP and the ICE port range reach the server; other UDP is counted and dropped.
    lab.nft("srv", f"""
        table inet srvfw {{
          counter media_in {{ }}
          counter udp_dropped {{ }}
          chain input {{
            type filter hook input priority filter; policy drop;
            iif lo accept
            tcp dport {HTTP} accept
            udp dport {PORTS[0]}-{PORTS[1]} counter name "media_in" accept
            meta l4proto udp counter name "udp_dropped" drop
          }}
        }}""")
    server_log = folder / "server.log"
    with server_log.open("w") as out:
        server = lab.popen("srv", [sys.executable, "-m", "server", "serve", "--host", "0.0.0.0",
                                   "--port", str(HTTP)], cwd=ROOT, env=env, stdout=out,
                           stderr=subprocess.STDOUT)
    publisher = None
    try:
        wait_tcp(lab, "pub", netns.PUBLIC_SERVER, HTTP, server, server_log)
        # stderr to a file: a pipe nobody reads would fill and stall the publisher.
        publisher_log = folder / "publisher.log"
        with publisher_log.open("w") as errors:
            publisher = lab.popen("pub", [sys.executable, "-m", "tests.deploy.netns_peer", "publish",
                                          BASE, row["id"], row["stream_key"]],
                                  cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=errors)
        assert publisher.stdout is not None
        line = publisher.stdout.readline()
        if not line or json.loads(line)["status"] != 201:
            stop(publisher)
            raise AssertionError(f"the publisher did not go live: {line}{publisher_log.read_text()}\n"
                                 + server_log.read_text()[-3000:])
        yield {"id": row["id"], "env": env, "server_log": server_log}
    finally:
        if publisher is not None:
            stop(publisher)
        stop(server)


def watch(lab: netns.Lab, leaf: str, show: dict[str, Any], *extra: str) -> list[dict[str, Any]]:
    done = subprocess.run(
        [*lab.exec_args(leaf), sys.executable, "-m", "tests.deploy.netns_peer", "watch", BASE,
         show["id"], "--timeout", "120", *extra],
        cwd=ROOT, env=show["env"], capture_output=True, text=True, timeout=240,
    )
    assert done.stdout, done.stderr[-3000:] + show["server_log"].read_text()[-3000:]
    report = json.loads(done.stdout.splitlines()[-1])["viewers"]
    assert done.returncode == 0, json.dumps(report, indent=1)[:4000] + done.stderr[-2000:]
    return report


def answer_candidates(report: dict[str, Any]) -> list[tuple[str, int, str]]:
    return [(host, int(port), kind) for host, port, kind in CANDIDATE.findall(report["answer"])]


def test_a_viewer_outside_the_nat_gets_frames_through_the_announced_address(
    lab: netns.Lab, show: dict[str, Any],
) -> None:
    (viewer,) = watch(lab, "pub", show, "--frames", "15")
    candidates = answer_candidates(viewer)
    # Bound on the private address, advertised as the public one, only.
    assert candidates and {host for host, _, _ in candidates} == {netns.PUBLIC_SERVER}
    assert netns.address("srv") not in viewer["answer"]
    assert viewer["frames"] >= 15 and viewer["nominated"] == "host"


def test_a_viewer_without_udp_gets_frames_through_coturn(lab: netns.Lab, show: dict[str, Any]) -> None:
    # Everything leaving `blk` is dropped but HTTP to the server and TCP to coturn.
    lab.nft("blk", f"""
        table inet blkfw {{
          counter udp_dropped {{ }}
          chain output {{
            type filter hook output priority filter; policy drop;
            oif lo accept
            ip daddr {netns.PUBLIC_SERVER} tcp dport {HTTP} accept
            ip daddr {netns.address("turn")} tcp dport {TURN_PORT} accept
            meta l4proto udp counter name "udp_dropped" drop
          }}
        }}""")
    (viewer,) = watch(lab, "blk", show, "--frames", "15", "--turn")
    assert viewer["frames"] >= 15
    assert viewer["nominated"] == "relay"  # the media came through coturn
    assert viewer["links"] == 1  # the WHEP answer carried the TURN server (RFC 9725)
    assert lab.counters("blk", "blkfw")["udp_dropped"] > 0  # its direct attempts were dropped


def test_only_the_port_range_is_open_and_twenty_viewers_watch(lab: netns.Lab, show: dict[str, Any]) -> None:
    before = lab.counters("srv", "srvfw")
    viewers = watch(lab, "pub", show, "--viewers", "20", "--frames", "10")
    assert len(viewers) == 20 and all(v["frames"] >= 10 for v in viewers)
    ports = {port for v in viewers for _, port, _ in answer_candidates(v)}
    assert len(ports) == 20 and all(PORTS[0] <= p <= PORTS[1] for p in ports)
    after = lab.counters("srv", "srvfw")
    assert after["media_in"] > before["media_in"]
    # No UDP ever arrived for a port outside the range: nothing needed one.
    assert after["udp_dropped"] == 0
