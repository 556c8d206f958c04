"""Where the headless client's configuration comes from: a token, or a wg-quick file.

Who calls it: :mod:`tunplug.cli.headless`, at start-up and on SIGHUP. The order, as in
Firezone's headless client: ``--config FILE`` when given; else the ``TUNPLUG_TOKEN`` variable
(taken by the command at start-up with :func:`take_token_variable`: read once, then removed from
the process environment so that a reload and child processes never see it); else the token
file. Files holding secrets must pass :func:`~tunplug.secure_files.
check_private_file`. Nothing here logs or prints a token or key.
"""

from __future__ import annotations

import os
from collections.abc import MutableMapping
from dataclasses import dataclass
from pathlib import Path

from tunplug import token
from tunplug.exceptions import ConfigError
from tunplug.secure_files import check_private_file, read_private_file
from tunplug.wgquick import WgQuickConfig, load_wg_quick

TOKEN_VARIABLE = "TUNPLUG_TOKEN"


@dataclass(frozen=True, slots=True)
class Source:
    """A configuration and a description of where it came from (for logs and ``--check``)."""

    config: WgQuickConfig
    origin: str
    #: The client's name at the gateway, when the source is a token.
    client_name: str | None = None
    #: The gateway's ``host:port`` endpoints, in order, when the source is a token (the
    #: config's peer starts at the first: :mod:`tunplug.endpoints` moves it along).
    endpoints: tuple[str, ...] = ()
    #: The gateway's control channel (``address:port`` in the tunnel), when the token has one.
    control: str | None = None

    @classmethod
    def from_token(cls, client: token.ClientToken, origin: str) -> Source:
        """A token's configuration (its first endpoint resolved when it can be), name,
        endpoints and control channel."""
        return cls(client.to_config(), origin, client.name, tuple(client.endpoints), client.control)


def take_token_variable(environ: MutableMapping[str, str] = os.environ) -> str | None:
    """``TUNPLUG_TOKEN``, removed from ``environ``: what a command does once, at start-up."""
    return environ.pop(TOKEN_VARIABLE, None)


class ConfigSource:
    """Reads the configuration now and again on reload, from the same place.

    ``token_variable`` is the value of ``TUNPLUG_TOKEN`` the command took at start-up
    (:func:`take_token_variable`), or ``None``.
    """

    def __init__(
        self, config_path: Path | None, token_path: Path, token_variable: str | None = None
    ) -> None:
        self.config_path = config_path
        self.token_path = token_path
        self._token_from_env = token_variable

    def load(self) -> Source:
        """The configuration as it is now.

        :raises ConfigError: no token or config, a file open to others, or malformed content.
        """
        if self.config_path is not None:
            check_private_file(self.config_path, "--config")
            return Source(load_wg_quick(self.config_path), f"config file {self.config_path}")
        if self._token_from_env is not None:
            client = token.decode(self._token_from_env, TOKEN_VARIABLE)
            return Source.from_token(client, f"{TOKEN_VARIABLE} variable")
        if not self.token_path.exists():
            raise ConfigError(
                "--token-path",
                f"no token: {self.token_path} does not exist; put the token from "
                f"'tunplug-gateway client add' there (mode 600), set {TOKEN_VARIABLE}, "
                "or use --config with a wg-quick file",
            )
        text = read_private_file(self.token_path, "--token-path")
        client = token.decode(text, str(self.token_path))
        return Source.from_token(client, f"token file {self.token_path}")

    def reload(self) -> WgQuickConfig:
        """SIGHUP: the file again (a token from the variable cannot change; it is reused)."""
        return self.load().config
