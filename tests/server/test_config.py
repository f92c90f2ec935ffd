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
