"""Deployment fixtures: one wheel built per session, installed into a fresh venv.

The venv gets our wheel only (non-editable, ``--no-deps --no-index``); the third-party
dependencies are shared from the test's own environment through a ``.pth`` file, so
the test needs no network and no minutes of downloads, while every file of *ours* that
the installed server reads must come from the wheel. The source checkout is never on
the installed server's path: it runs from an empty folder.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import sysconfig
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class InstalledWheel:
    """A venv holding the project's wheel, and how to run its commands."""

    wheel: Path
    venv: Path

    @property
    def python(self) -> Path:
        return self.venv / "bin" / "python"

    @property
    def shopstream(self) -> Path:
        return self.venv / "bin" / "shopstream"

    def site_packages(self) -> Path:
        out = subprocess.run(
            [self.python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            check=True, capture_output=True, text=True,
        )
        return Path(out.stdout.strip())


def clean_env(**extra: str) -> dict[str, str]:
    """Return this environment without the settings and paths a test must not inherit."""
    drop = ("DATABASE_URL", "JWT_SECRET", "REDIS_URL", "PYTHONPATH", "LOG_REQUESTS",
            "ICE_PORT_RANGE", "ICE_ANNOUNCED_ADDRESSES", "TURN_URLS", "TURN_SECRET",
            "SHOPSTREAM_DATA_DIR", "VIRTUAL_ENV")
    env = {k: v for k, v in os.environ.items() if k not in drop}
    env.update(extra)
    return env


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# A developer's tree holds more than the source; none of it may reach the wheel, and a
# stale build/ would (setuptools reuses it), so the wheel is built from a clean copy.
NOT_SOURCE = shutil.ignore_patterns(
    ".git", ".venv", "var", "build", "*.egg-info", "__pycache__", "test-artifacts", "results",
)


def build_wheel(out_dir: Path) -> Path:
    """Build the project's wheel from a clean copy (isolated build, as `pip wheel` does)."""
    source = out_dir / "source"
    shutil.copytree(ROOT, source, ignore=NOT_SOURCE)
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(out_dir), str(source)],
        check=True, capture_output=True, text=True, timeout=600,
    )
    (wheel,) = out_dir.glob("kein_shopstream-*.whl")
    return wheel


def install_wheel(wheel: Path, venv: Path) -> InstalledWheel:
    """Make a fresh venv and install `wheel` into it without its dependencies."""
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    installed = InstalledWheel(wheel, venv)
    # Our dependencies come from this environment: appended after the venv's own
    # site-packages, so the installed copy of our packages always wins.
    deps = Path(sysconfig.get_paths()["purelib"])
    (installed.site_packages() / "shared_dependencies.pth").write_text(f"{deps}\n")
    subprocess.run(
        [installed.python, "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheel)],
        check=True, capture_output=True, text=True, timeout=300,
    )
    return installed


@pytest.fixture(scope="session")
def built_wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_wheel(tmp_path_factory.mktemp("wheel"))


@pytest.fixture(scope="session")
def installed_wheel(built_wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[InstalledWheel]:
    yield install_wheel(built_wheel, tmp_path_factory.mktemp("venv") / "venv")
