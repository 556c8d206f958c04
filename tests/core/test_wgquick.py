"""wg-quick files: what any WireGuard server hands out, and one clear line when malformed."""

from __future__ import annotations

from ipaddress import ip_address, ip_interface, ip_network

import pytest

from tunplug.exceptions import ConfigError
from tunplug.wgquick import load_wg_quick, parse_wg_quick
from tunplug.wireguard.keys import parse_key

PRIVATE = "yAnz5TF+lXXJte14tji3zlMNq+hd2rYUIgJBgB3fBmk="
PUBLIC = "xTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8Dg="
PSK = "FpCyhws9cxwWoV4xELtfJvjJN+zQVRPISllRWgeopVE="

GOOD = f"""
# a comment
[Interface]
PrivateKey = {PRIVATE}
Address = 10.0.0.2/24, fd00::2/64
ListenPort = 51821
DNS = 10.0.0.1, corp.example
MTU = 1380
PostUp = iptables -A FORWARD   # ignored with a warning

[Peer]
PublicKey = {PUBLIC}
PresharedKey = {PSK}
Endpoint = 127.0.0.1:51820
AllowedIPs = 0.0.0.0/0, ::/0
PersistentKeepalive = 25
"""


def test_a_full_config_is_read(caplog):
    config = parse_wg_quick(GOOD, "wg0.conf")
    assert config.private_key == parse_key(PRIVATE)
    assert config.addresses == (ip_interface("10.0.0.2/24"), ip_interface("fd00::2/64"))
    assert config.listen_port == 51821
    assert config.mtu == 1380
    assert config.dns_servers == (ip_address("10.0.0.1"),)
    assert config.dns_domains == ("corp.example",)
    (peer,) = config.peers
    assert peer.public_key == parse_key(PUBLIC)
    assert peer.preshared_key == parse_key(PSK)
    assert peer.endpoint == ("127.0.0.1", 51820)
    assert peer.allowed_ips == (ip_network("0.0.0.0/0"), ip_network("::/0"))
    assert peer.persistent_keepalive == 25
    assert "PostUp is a wg-quick option tunplug ignores" in caplog.text
    assert PRIVATE not in repr(config)  # keys never reach logs through repr


def test_ipv6_endpoints_and_names_resolve():
    text = (
        f"[Interface]\nPrivateKey = {PRIVATE}\n[Peer]\nPublicKey = {PUBLIC}\nEndpoint = [::1]:4\n"
    )
    assert parse_wg_quick(text).peers[0].endpoint == ("::1", 4)
    text = text.replace("[::1]:4", "localhost:5")
    assert parse_wg_quick(text).peers[0].endpoint[1] == 5


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("[Interface]\nPrivateKey = abc\n", "wg0.conf:2: PrivateKey must be 44 characters"),
        (
            f"[Interface]\nPrivateKey = {PRIVATE}\nListenPort = 70000\n",
            "wg0.conf:3: ListenPort: must be between 0 and 65535",
        ),
        (
            f"[Interface]\nPrivateKey = {PRIVATE}\nAddress = 10.0.0.300/24\n",
            "wg0.conf:3: Address: '10.0.0.300/24' is not an address",
        ),
        (
            f"[Interface]\nPrivateKey = {PRIVATE}\nColour = blue\n",
            "wg0.conf:3: Colour: unknown [Interface] key",
        ),
        ("PrivateKey = x\n", "wg0.conf:1: PrivateKey: appears before any"),
        ("[Interface]\nAddress = 10.0.0.1/24\n", "wg0.conf: [Interface]: PrivateKey is missing"),
        (
            f"[Interface]\nPrivateKey = {PRIVATE}\n[Peer]\nAllowedIPs = 10.0.0.0/8\n",
            "wg0.conf:3: [Peer]: PublicKey is missing",
        ),
        (
            f"[Interface]\nPrivateKey = {PRIVATE}\n[Peer]\nPublicKey = {PUBLIC}\nEndpoint = nope\n",
            "wg0.conf:5: Endpoint: expected host:port",
        ),
        (
            f"[Interface]\nPrivateKey = {PRIVATE}\n[Peer]\nPublicKey = {PUBLIC}\n"
            "AllowedIPs = 10.0.0.0/33\n",
            "wg0.conf:5: AllowedIPs: '10.0.0.0/33' is not a network",
        ),
        ("[Wat]\n", "wg0.conf:1: [Wat]: unknown section"),
        ("", "wg0.conf: has no [Interface] section"),
    ],
)
def test_malformed_configs_are_one_line_naming_file_line_and_key(text, expected):
    with pytest.raises(ConfigError) as caught:
        parse_wg_quick(text, "wg0.conf")
    assert str(caught.value).startswith(expected)
    assert "\n" not in str(caught.value)


def test_unreadable_file(tmp_path):
    with pytest.raises(ConfigError, match="cannot read"):
        load_wg_quick(tmp_path / "missing.conf")
