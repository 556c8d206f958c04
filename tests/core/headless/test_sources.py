"""Where the headless client's configuration comes from, and logging to LOG_DIR."""

from __future__ import annotations

import logging
import os

import pytest

from tunplug import token
from tunplug.cli._common import setup_logging
from tunplug.exceptions import ConfigError
from tunplug.headless.sources import TOKEN_VARIABLE, ConfigSource, take_token_variable
from tunplug.testing.interop import Keys


def make_token(name: str = "ci") -> str:
    return token.encode(
        token.ClientToken(
            name=name,
            gateway_key=Keys.generate().public,
            endpoints=["192.0.2.1:51820"],
            private_key=Keys.generate().private,
            addresses=["100.64.0.2/32"],
            routes=["10.0.0.0/8"],
        )
    )


def test_the_token_variable_wins_and_leaves_the_environment(monkeypatch, tmp_path):
    file_token = tmp_path / "token"
    file_token.write_text(make_token("from-file"))
    file_token.chmod(0o600)
    monkeypatch.setenv(TOKEN_VARIABLE, make_token("from-env"))
    source = ConfigSource(None, file_token, take_token_variable())
    assert TOKEN_VARIABLE not in os.environ
    loaded = source.load()
    assert loaded.client_name == "from-env"
    assert loaded.origin == "TUNPLUG_TOKEN variable"


def test_the_token_file_is_read_again_on_reload(monkeypatch, tmp_path):
    monkeypatch.delenv(TOKEN_VARIABLE, raising=False)
    path = tmp_path / "token"
    path.write_text(make_token("one"))
    path.chmod(0o600)
    source = ConfigSource(None, path)
    first = source.load()
    assert first.client_name == "one"
    path.write_text(make_token("two"))
    assert source.reload().private_key != first.config.private_key


def test_no_token_anywhere_says_every_way_to_give_one(monkeypatch, tmp_path):
    monkeypatch.delenv(TOKEN_VARIABLE, raising=False)
    with pytest.raises(ConfigError) as caught:
        ConfigSource(None, tmp_path / "token").load()
    message = str(caught.value)
    assert message.startswith("--token-path: no token:")
    for hint in ("tunplug-gateway client add", TOKEN_VARIABLE, "--config"):
        assert hint in message


def test_a_config_file_gets_the_same_permission_check(monkeypatch, tmp_path):
    monkeypatch.delenv(TOKEN_VARIABLE, raising=False)
    config = tmp_path / "wg0.conf"
    config.write_text(token.decode(make_token()).to_wg_quick())
    config.chmod(0o644)
    with pytest.raises(ConfigError, match="run: chmod 600"):
        ConfigSource(config, tmp_path / "token").load()
    config.chmod(0o600)
    assert ConfigSource(config, tmp_path / "token").load().origin == f"config file {config}"


def test_log_dir_gets_a_rotated_file(tmp_path):
    logs = tmp_path / "logs"
    try:
        path = setup_logging("info", logs, file_name="client.log", max_bytes=4096, backups=2)
        assert path == logs / "client.log"
        for index in range(200):
            logging.getLogger("tunplug.test").info("line %d %s", index, "x" * 40)
    finally:
        for handler in logging.getLogger().handlers:
            handler.close()
        logging.getLogger().handlers.clear()
    assert (logs / "client.log").stat().st_mode & 0o777 == 0o640
    assert sorted(p.name for p in logs.iterdir()) == ["client.log", "client.log.1", "client.log.2"]
    assert all(p.stat().st_size <= 4096 for p in logs.iterdir())
    assert "line 199" in (logs / "client.log").read_text()
