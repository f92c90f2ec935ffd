"""Settings: secrets never print, the JWT secret is generated once and kept."""

from __future__ import annotations

import pytest

from server.config import ConfigError, Secret, Settings


def test_secrets_never_print() -> None:
    settings = Settings.from_env({"JWT_SECRET": "s" * 40, "DATABASE_URL": "postgresql://u:hunter2@h/db"})
    text = repr(settings) + str(settings)
    assert "hunter2" not in text and "s" * 40 not in text
    assert settings.database_url is not None and settings.database_url.get().endswith("/db")


def test_generated_jwt_secret_is_kept_in_data_dir(tmp_path) -> None:
    first = Settings.from_env({}, data_dir=tmp_path).with_jwt_secret_from_data_dir()
    second = Settings.from_env({}, data_dir=tmp_path).with_jwt_secret_from_data_dir()
    assert len(first.jwt_secret.get()) >= 32
    assert first.jwt_secret.get() == second.jwt_secret.get()
    assert (tmp_path / "jwt_secret").stat().st_mode & 0o077 == 0
    assert Settings.from_env({}, data_dir=tmp_path / "other").with_jwt_secret_from_data_dir().jwt_secret.get() != first.jwt_secret.get()


@pytest.mark.parametrize(
    "env",
    [{"SHOPSTREAM_PORT": "abc"}, {"SHOPSTREAM_PORT": "70000"}, {"JWT_SECRET": "short"},
     {"ICE_SERVERS": "stun.example.com:3478"}, {"DB_POOL_MIN": "0"},
     {"DB_POOL_MIN": "30", "DB_POOL_MAX": "20"}, {"DB_POOL_MAX": "many"}],
)
def test_bad_settings_are_refused(env) -> None:
    with pytest.raises(ConfigError):
        Settings.from_env(env)


def test_pool_size_is_read_from_the_environment() -> None:
    settings = Settings.from_env({"DB_POOL_MIN": "5", "DB_POOL_MAX": "40"})
    assert (settings.db_pool_min, settings.db_pool_max) == (5, 40)
    assert (Settings.from_env({}).db_pool_min, Settings.from_env({}).db_pool_max) == (2, 20)


def test_no_default_ice_server() -> None:
    assert Settings.from_env({}).ice_servers == ()
    assert Settings.from_env({"ICE_SERVERS": "stun:127.0.0.1:3478"}).ice_servers == ("stun:127.0.0.1:3478",)
    assert repr(Secret("x")) == "Secret('**********')"


# --- media ports, announced addresses, TURN (issue 15) -------------------------------


def test_ice_port_ranges_announced_addresses_and_turn_are_read() -> None:
    settings = Settings.from_env({
        "ICE_PORT_RANGE": "50000-50099, 50200-50299", "ICE_HOST_ADDRESSES": "10.0.0.5",
        "ICE_ANNOUNCED_ADDRESSES": "203.0.113.7", "TURN_URLS": "turn:turn.example.net:3478?transport=tcp",
        "TURN_SECRET": "t" * 32, "TURN_CREDENTIAL_TTL": "600",
    })
    assert settings.ice_port_ranges == ((50000, 50099), (50200, 50299))
    assert settings.ice_announced_pairs == (("*", "203.0.113.7"),)
    assert settings.turn_urls == ("turn:turn.example.net:3478?transport=tcp",)
    assert settings.turn_credential_ttl == 600 and "t" * 32 not in repr(settings)
    paired = Settings.from_env({"ICE_HOST_ADDRESSES": "10.0.0.5,10.0.1.5",
                                "ICE_ANNOUNCED_ADDRESSES": "203.0.113.7,203.0.113.8"})
    assert paired.ice_announced_pairs == (("10.0.0.5", "203.0.113.7"), ("10.0.1.5", "203.0.113.8"))
    assert Settings.from_env({"ICE_PORT_RANGE": "50000"}).ice_port_ranges == ((50000, 50000),)
    assert Settings.from_env({}).simulcast_ladder == 0
    assert Settings.from_env({"SIMULCAST_LADDER": "2"}).simulcast_ladder == 2


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"ICE_PORT_RANGE": "50199-50000"}, "ICE_PORT_RANGE"),
        ({"ICE_PORT_RANGE": "50000-50199,50100-50299"}, "ICE_PORT_RANGE"),
        ({"ICE_PORT_RANGE": "50000-70000"}, "ICE_PORT_RANGE"),
        ({"ICE_PORT_RANGE": "fifty-sixty"}, "ICE_PORT_RANGE"),
        ({"ICE_ANNOUNCED_ADDRESSES": "203.0.113.300"}, "ICE_ANNOUNCED_ADDRESSES"),
        ({"ICE_ANNOUNCED_ADDRESSES": "public.example.com"}, "ICE_ANNOUNCED_ADDRESSES"),
        ({"ICE_HOST_ADDRESSES": "10.0.0"}, "ICE_HOST_ADDRESSES"),
        ({"ICE_ANNOUNCED_ADDRESSES": "203.0.113.7,203.0.113.8"}, "ICE_ANNOUNCED_ADDRESSES"),
        ({"TURN_SECRET": "s" * 32}, "TURN_SECRET"),
        ({"TURN_URLS": "turn:127.0.0.1:3478"}, "TURN_URLS"),
        ({"TURN_URLS": "stun:127.0.0.1:3478", "TURN_SECRET": "s" * 32}, "TURN_URLS"),
        ({"TURN_URLS": "turn:127.0.0.1", "TURN_SECRET": "s", "TURN_CREDENTIAL_TTL": "5"},
         "TURN_CREDENTIAL_TTL"),
        ({"SIMULCAST_LADDER": "3"}, "SIMULCAST_LADDER"),
        ({"SIMULCAST_LADDER": "on"}, "SIMULCAST_LADDER"),
    ],
)
def test_bad_media_settings_name_the_setting(env: dict[str, str], named: str) -> None:
    with pytest.raises(ConfigError, match=named):
        Settings.from_env(env)


def test_a_bad_setting_stops_the_server_before_anything_binds(tmp_path) -> None:
    """One line naming the setting; no port bound, no data folder written."""
    import os
    import socket
    import subprocess
    import sys

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "JWT_SECRET")}
    env.update(ICE_PORT_RANGE="50199-50000", SHOPSTREAM_DATA_DIR=str(tmp_path / "var"))
    done = subprocess.run(
        [sys.executable, "-m", "server", "serve", "--port", str(port)],
        env=env, capture_output=True, text=True, timeout=60,
    )
    assert done.returncode != 0
    assert done.stdout == ""
    assert done.stderr.strip().splitlines() == [
        "configuration error: ICE_PORT_RANGE: 50199-50000 is reversed (write 50000-50199)"
    ]
    assert not (tmp_path / "var").exists()
    with socket.socket() as again:
        again.bind(("127.0.0.1", port))  # still free: nothing was bound half-way
