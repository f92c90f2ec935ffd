"""The container recipe: Dockerfile, .dockerignore and compose.yaml.

No Docker daemon runs here, so no image is built: the files' promises are checked
(multi-stage, non-root, health check, UDP range, allow-listed context), `docker compose
config` validates compose.yaml when a compose client is installed, and the image's
install-and-run steps are replayed on this machine: the wheel installed by root, the
server run by an unprivileged user, the HEALTHCHECK command run against it.
"""

from __future__ import annotations

import json
import os
import pwd
import re
import secrets
import shutil
import signal
import subprocess
import sysconfig
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import pytest
import yaml

from server.config import Settings
from tests.conftest import _with_database
from tests.deploy.conftest import ROOT, clean_env, free_port

pytestmark = pytest.mark.deploy

DOCKERFILE = (ROOT / "Dockerfile").read_text()
COMPOSE = ROOT / "compose.yaml"


def instructions(stage: str) -> list[tuple[str, str]]:
    """Return (INSTRUCTION, arguments) of one Dockerfile stage, continuation lines joined."""
    text = re.sub(r"\\\n\s*", " ", DOCKERFILE)
    current, found = None, []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        word, _, rest = line.partition(" ")
        if word.upper() == "FROM":
            current = rest.split(" AS ")[-1].strip() if " AS " in rest else rest
        if current == stage:
            found.append((word.upper(), rest.strip()))
    return found


def healthcheck_command() -> list[str]:
    (args,) = [rest for word, rest in instructions("runtime") if word == "HEALTHCHECK"]
    return json.loads(args.split("CMD", 1)[1])


def test_dockerfile_builds_a_wheel_and_runs_it_unprivileged() -> None:
    build, runtime = instructions("build"), instructions("runtime")
    assert build and runtime
    assert any(w == "RUN" and "pip wheel" in r for w, r in build)
    assert any(w == "COPY" and r.startswith("--from=build") for w, r in runtime)
    installs = [r for w, r in runtime if w == "RUN" and "pip install" in r]
    assert installs and not any(" -e " in r or "--editable" in r for r in installs)
    # Nothing from the source tree reaches the runtime stage but the built wheels.
    assert not [r for w, r in runtime if w == "COPY" and not r.startswith("--from=build")]
    users = [r for w, r in runtime if w == "USER"]
    assert users and users[-1] not in ("root", "0")
    assert any(w == "HEALTHCHECK" and "/readyz" in r for w, r in runtime)
    # The UDP range exposed is the one the server is told to bind in.
    env = " ".join(r for w, r in runtime if w == "ENV")
    (port_range,) = re.findall(r"ICE_PORT_RANGE=(\d+-\d+)", env)
    exposed = " ".join(r for w, r in runtime if w == "EXPOSE").split()
    assert f"{port_range}/udp" in exposed and "8080/tcp" in exposed
    Settings.from_env({"ICE_PORT_RANGE": port_range})  # and it is a valid setting


def test_the_build_context_is_an_allow_list() -> None:
    lines = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
             if line.strip() and not line.startswith("#")]
    assert lines[0] == "*"  # everything is out unless named: .venv, var/, .git, tests
    allowed = {line[1:].rstrip("/") for line in lines if line.startswith("!")}
    copied = {r.split()[0] for w, r in instructions("build") if w == "COPY"} | {"pyproject.toml", "README.md"}
    assert copied <= allowed | {"pyproject.toml"}, copied - allowed
    assert not allowed & {"var", ".venv", ".git", "tests"}


def test_compose_runs_postgres_redis_coturn_and_the_server() -> None:
    spec = yaml.safe_load(COMPOSE.read_text())
    assert set(spec["services"]) == {"postgres", "redis", "coturn", "server"}
    server = spec["services"]["server"]
    env = server["environment"]
    for name in ("DATABASE_URL", "REDIS_URL", "JWT_SECRET", "ICE_PORT_RANGE", "ICE_ANNOUNCED_ADDRESSES",
                 "TURN_URLS", "TURN_SECRET", "STRIPE_SECRET_KEY", "STRIPE_WEBHOOK_SECRET"):
        assert name in env, name
    assert f'{env["ICE_PORT_RANGE"]}:{env["ICE_PORT_RANGE"]}/udp' in server["ports"]
    # coturn checks the credentials the server mints with the same secret.
    coturn = " ".join(spec["services"]["coturn"]["command"])
    assert "--use-auth-secret" in coturn and "--static-auth-secret=${TURN_SECRET" in coturn


def compose_client() -> list[str] | None:
    if shutil.which("docker") and subprocess.run(["docker", "compose", "version"],
                                                 capture_output=True).returncode == 0:
        return ["docker", "compose"]
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    return None


def test_compose_config_validates() -> None:
    client = compose_client()
    if client is None:
        pytest.skip("no compose client (docker compose / docker-compose) installed")
    env = clean_env(PUBLIC_IP="203.0.113.7", POSTGRES_PASSWORD="pw", JWT_SECRET="j" * 40,
                    TURN_SECRET="t" * 32)
    done = subprocess.run([*client, "-f", str(COMPOSE), "config", "-q"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    # The required secrets are required: without them compose refuses, naming one.
    bare = {k: v for k, v in env.items() if k not in ("POSTGRES_PASSWORD", "JWT_SECRET", "TURN_SECRET")}
    refused = subprocess.run([*client, "-f", str(COMPOSE), "config", "-q"], cwd=ROOT, env=bare,
                             capture_output=True, text=True, timeout=120)
    assert refused.returncode != 0 and "set " in refused.stderr


@pytest.fixture
def unprivileged() -> Iterator[tuple[pwd.struct_passwd, Path]]:
    """An unprivileged user and a folder it can use (pytest's own tmp is root-only)."""
    if os.geteuid() != 0:
        pytest.skip("switching to an unprivileged user needs root")
    try:
        user = pwd.getpwnam("nobody")
    except KeyError:
        pytest.skip("no 'nobody' user on this machine")
    folder = Path(tempfile.mkdtemp(prefix="shopstream-image-"))
    folder.chmod(0o755)
    try:
        yield user, folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


async def test_the_image_steps_run_as_an_unprivileged_user(
    built_wheel: Path, unprivileged: tuple[pwd.struct_passwd, Path], admin_dsn: str,
) -> None:
    """Root installs the wheel (not editable); `nobody` serves; the HEALTHCHECK passes."""
    user, folder = unprivileged
    system_python = shutil.which("python3", path="/usr/bin:/bin")
    if system_python is None:
        pytest.skip("no system python3 that an unprivileged user may run")
    venv = folder / "venv"
    subprocess.run([system_python, "-m", "venv", str(venv)], check=True, timeout=300)
    purelib = subprocess.run([venv / "bin" / "python", "-c",
                              "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             check=True, capture_output=True, text=True).stdout.strip()
    # As in test_wheel.py, the dependencies this environment has are shared, but pip
    # resolves them as the image's `pip install` does: what this interpreter needs on
    # top (e.g. async-timeout below Python 3.11.3) is fetched like in the image.
    Path(purelib, "shared_dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    installed = subprocess.run([venv / "bin" / "python", "-m", "pip", "install", "-q", str(built_wheel)],
                               capture_output=True, text=True, timeout=600)
    assert installed.returncode == 0, installed.stderr
    data = folder / "data"
    data.mkdir(mode=0o700)
    os.chown(data, user.pw_uid, user.pw_gid)

    name = f"shopstream_image_{secrets.token_hex(4)}"
    admin = await asyncpg.connect(admin_dsn)
    await admin.execute(f'CREATE DATABASE "{name}"')
    port = free_port()
    env = clean_env(
        PATH=f"{venv / 'bin'}:/usr/bin:/bin", HOME=str(data), SHOPSTREAM_HOST="0.0.0.0",
        SHOPSTREAM_PORT=str(port), SHOPSTREAM_DATA_DIR=str(data), ICE_PORT_RANGE="50000-50199",
        DATABASE_URL=_with_database(admin_dsn, name),
    )

    def as_user() -> None:
        os.setgroups([])
        os.setgid(user.pw_gid)
        os.setuid(user.pw_uid)

    log = folder / "serve.log"
    try:
        with log.open("w") as out:
            server = subprocess.Popen(["shopstream", "serve"], cwd=data, env=env, stdout=out,
                                      stderr=subprocess.STDOUT, preexec_fn=as_user)
        try:
            deadline = time.monotonic() + 120
            while True:
                check = subprocess.run(healthcheck_command(), cwd=data, env=env, preexec_fn=as_user,
                                       capture_output=True, text=True, timeout=30)
                if check.returncode == 0:
                    break
                assert server.poll() is None, log.read_text()
                assert time.monotonic() < deadline, check.stderr + log.read_text()
                time.sleep(0.5)
            status = Path(f"/proc/{server.pid}/status").read_text()
            assert re.search(rf"^Uid:\s+{user.pw_uid}\s", status, re.MULTILINE)
        finally:
            server.send_signal(signal.SIGTERM)
            server.wait(timeout=60)
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()
    assert server.returncode == 0, log.read_text()
    # The generated JWT secret belongs to the unprivileged user, unreadable by others.
    secret = data / "jwt_secret"
    assert secret.stat().st_uid == user.pw_uid and secret.stat().st_mode & 0o077 == 0
