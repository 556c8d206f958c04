"""The gateway registry: init/open, validation, address allocation, revocation, the change
counter, statistics, two processes at once, schema migration, file modes, issued tokens."""

from __future__ import annotations

import sqlite3
import stat
import subprocess
import sys
import textwrap
import threading
from ipaddress import IPv4Address, IPv6Address, ip_network
from pathlib import Path

import pytest

from tunplug import token
from tunplug.exceptions import ConfigError
from tunplug.gateway.registry import (
    DB_NAME,
    DEFAULT_SUBNET_V6,
    KEY_NAME,
    SCHEMA_VERSION,
    Registry,
)
from tunplug.wgquick import parse_wg_quick
from tunplug.wireguard.keys import format_key, parse_key
from tunplug_crypto_cryptography.backend import CryptographyBackend

crypto = CryptographyBackend()
ENDPOINT = "203.0.113.7:51820"  # documentation address: parsed, never contacted


def make(state_dir: Path, **options: object) -> Registry:
    settings: dict[str, object] = {"endpoint": ENDPOINT, "resources": ["10.20.0.0/16"]}
    settings.update(options)
    return Registry.init(state_dir, crypto=crypto, **settings)  # type: ignore[arg-type]


@pytest.fixture
def state_dir(tmp_path: Path) -> Path:
    return tmp_path / "state"


@pytest.fixture
def registry(state_dir: Path):
    with make(state_dir, dns=["10.20.0.53"]) as registry:
        yield registry


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


# -- init and open ----------------------------------------------------------------------------
def test_init_creates_a_private_directory_key_and_database(registry, state_dir):
    assert mode(state_dir) == 0o700
    assert mode(state_dir / KEY_NAME) == 0o600
    assert mode(state_dir / DB_NAME) == 0o600
    registry.add_client("laptop")  # the WAL files appear with the first write
    for extra in state_dir.glob(f"{DB_NAME}-*"):
        assert mode(extra) & 0o077 == 0, extra
    gateway = registry.gateway
    assert parse_key((state_dir / KEY_NAME).read_text()) == gateway.private_key
    assert crypto.public_key(gateway.private_key) == gateway.public_key
    assert gateway.endpoint == ENDPOINT and gateway.listen_port == 51820
    assert str(gateway.subnet_v4) == "100.64.0.0/11"
    assert gateway.subnet_v6 == ip_network(DEFAULT_SUBNET_V6)
    assert gateway.gateway_address_v4 == IPv4Address("100.64.0.1")
    assert gateway.gateway_address_v6 == IPv6Address("fd7a:7470:6c67::1")
    assert [str(resource.target) for resource in registry.resources()] == ["10.20.0.0/16"]
    assert [str(server) for server in gateway.dns] == ["10.20.0.53"]


def test_init_tightens_an_existing_directory(tmp_path):
    state_dir = tmp_path / "state"
    state_dir.mkdir(mode=0o755)
    make(state_dir).close()
    assert mode(state_dir) == 0o700


def test_open_reads_what_init_stored(registry, state_dir):
    with Registry.open(state_dir, crypto=crypto) as reopened:
        assert reopened.gateway == registry.gateway
        assert reopened.gateway.private_key == registry.gateway.private_key


def test_open_refuses_a_directory_that_was_never_initialised(tmp_path):
    with pytest.raises(ConfigError, match="not initialised: run tunplug-gateway init") as info:
        Registry.open(tmp_path / "missing")
    assert info.value.setting == "--state-dir"


def test_a_second_init_is_refused_unless_forced(registry, state_dir):
    registry.add_client("laptop")
    with pytest.raises(ConfigError, match=r"already initialised.*--force"):
        make(state_dir)
    with make(state_dir, force=True, resources=["10.30.0.0/16"]) as again:
        assert again.gateway.public_key != registry.gateway.public_key
        assert again.clients(include_revoked=True) == []
        assert [resource.name for resource in again.resources()] == ["10.30.0.0/16"]
    with Registry.open(state_dir) as reopened:
        assert reopened.gateway.public_key != registry.gateway.public_key


def test_a_registry_opened_without_crypto_reads_and_revokes_but_adds_no_client(registry, state_dir):
    registry.add_client("laptop")
    with Registry.open(state_dir) as reader:
        assert [client.name for client in reader.clients()] == ["laptop"]
        with pytest.raises(RuntimeError, match="without crypto"):
            reader.add_client("phone")
        reader.revoke("laptop")
    assert registry.clients() == []


@pytest.mark.parametrize(
    ("options", "flag", "fragment"),
    [
        ({"endpoint": "vpn.example.com"}, "--endpoint", "HOST:PORT"),
        ({"endpoint": "vpn.example.com:0"}, "--endpoint", "1-65535"),
        ({"endpoint": "vpn.example.com:port"}, "--endpoint", "1-65535"),
        ({"endpoint": "bad_host!:51820"}, "--endpoint", "not a host name"),
        ({"endpoint": "2001:db8::1:51820"}, "--endpoint", "brackets"),
        ({"endpoint": "[2001:db8::zz]:51820"}, "--endpoint", "not an IPv6 address"),
        ({"listen_port": 70000}, "--listen-port", "1-65535"),
        ({"subnet_v4": "100.64.0.0/33"}, "--subnet-v4", "not a network"),
        ({"subnet_v4": "100.64.0.1/24"}, "--subnet-v4", "host bits set"),
        ({"subnet_v4": "fd00::/64"}, "--subnet-v4", "not an IPv4 network"),
        ({"subnet_v4": "100.64.0.0/31"}, "--subnet-v4", "/8 to /30"),
        ({"subnet_v4": "10.0.0.0/7"}, "--subnet-v4", "/8 to /30"),
        ({"subnet_v6": "10.0.0.0/8"}, "--subnet-v6", "not an IPv6 network"),
        ({"subnet_v6": "fd00::/127"}, "--subnet-v6", "/32 to /120"),
        ({"subnet_v6": "fd00::/120"}, "--subnet-v6", "fewer addresses"),
        ({"resources": ["10.0.0.0/33"]}, "--resource", "not a network"),
        ({"resources": ["db"]}, "--resource", "not a DNS name"),
        ({"resources": ["100.64.1.0/24"]}, "TARGET", "overlaps the clients' subnet"),
        ({"resources": ["fd7a:7470:6c67::/80"]}, "TARGET", "overlaps the clients' subnet"),
        ({"resources": ["100.96.0.0/24"]}, "TARGET", "overlaps the proxy range"),
        ({"dns": ["dns.example.com"]}, "--dns", "not an IP address"),
    ],
)
def test_invalid_options_are_one_line_naming_the_flag(state_dir, options, flag, fragment):
    with pytest.raises(ConfigError) as info:
        make(state_dir, **options)
    assert info.value.setting == flag
    assert fragment in str(info.value)
    assert "\n" not in str(info.value)
    assert not state_dir.exists()  # nothing is created before the options are valid


def test_valid_endpoint_forms_and_a_full_tunnel_resource_are_accepted(tmp_path):
    for number, endpoint in enumerate(["vpn.example.com:443", "[2001:db8::1]:51820"]):
        with make(tmp_path / str(number), endpoint=endpoint, resources=["0.0.0.0/0", "::/0"]):
            pass
        with Registry.open(tmp_path / str(number)) as registry:
            assert registry.gateway.endpoint == endpoint
            # What init took for "everything" before resources had kinds: the Internet resource.
            assert [(r.name, r.kind) for r in registry.resources()] == [("internet", "internet")]


def test_init_needs_no_resource(tmp_path):
    with make(tmp_path / "s", resources=[]) as registry:
        assert registry.resources() == []


def test_open_refuses_a_database_others_can_read(registry, state_dir):
    (state_dir / DB_NAME).chmod(0o644)
    with pytest.raises(ConfigError, match="chmod 600"):
        Registry.open(state_dir)


def test_open_refuses_a_damaged_private_key(registry, state_dir):
    (state_dir / KEY_NAME).write_text("not a key\n")
    with pytest.raises(ConfigError, match="44 characters"):
        Registry.open(state_dir)


def test_rotate_key_replaces_the_key_file_and_the_stored_public_key(registry, state_dir):
    old = registry.gateway
    new = registry.rotate_key()
    assert new.public_key == crypto.public_key(new.private_key) != old.public_key
    assert mode(state_dir / KEY_NAME) == 0o600
    with Registry.open(state_dir) as reopened:
        assert (reopened.gateway.private_key, reopened.gateway.public_key) == (
            new.private_key,
            new.public_key,
        )
    issued = registry.add_client("after-rotation")
    assert token.decode(issued.token, "token").gateway_key == format_key(new.public_key)


def test_rotate_key_leaves_both_alone_when_the_key_file_cannot_be_written(registry, state_dir):
    old = registry.gateway
    (state_dir / KEY_NAME).unlink()
    (state_dir / KEY_NAME).mkdir()  # os.replace onto a directory fails
    with pytest.raises(ConfigError, match="cannot write"):
        registry.rotate_key()
    (state_dir / KEY_NAME).rmdir()
    (state_dir / KEY_NAME).write_text(format_key(old.private_key) + "\n")
    (state_dir / KEY_NAME).chmod(0o600)
    with Registry.open(state_dir) as reopened:
        assert reopened.gateway.public_key == old.public_key


# -- clients ----------------------------------------------------------------------------------
def test_clients_get_consecutive_addresses_after_the_gateways(registry):
    names = ["alpha", "beta", "gamma"]
    issued = [registry.add_client(name) for name in names]
    assert [str(item.client.address_v4) for item in issued] == [
        "100.64.0.2",
        "100.64.0.3",
        "100.64.0.4",
    ]
    assert [str(item.client.address_v6) for item in issued] == [
        "fd7a:7470:6c67::2",
        "fd7a:7470:6c67::3",
        "fd7a:7470:6c67::4",
    ]
    assert [client.name for client in registry.clients()] == names
    assert registry.clients() == [item.client for item in issued]
    assert len({item.client.public_key for item in issued}) == 3
    assert len({item.client.preshared_key for item in issued}) == 3


def test_a_tiny_subnet_is_exhausted_then_reuses_the_longest_revoked_address(state_dir):
    # /29: .0 network, .1 gateway, .2-.6 clients, .7 broadcast.
    with make(state_dir, subnet_v4="10.99.0.0/29") as registry:
        first = registry.add_client("c0")
        registry.revoke("c0")
        # While never-used addresses remain, a revoked client's address is not given out.
        assert str(registry.add_client("c1").client.address_v4) == "10.99.0.3"
        for number in range(2, 5):
            registry.add_client(f"c{number}")
        assert str(registry.clients()[-1].address_v4) == "10.99.0.6"
        reused = registry.add_client("c5")
        assert reused.client.address_v4 == first.client.address_v4 == IPv4Address("10.99.0.2")
        assert reused.client.address_v6 == first.client.address_v6
        with pytest.raises(ConfigError, match=r"no free address left in 10\.99\.0\.0/29"):
            registry.add_client("c6")
        registry.revoke("c3")
        registry.revoke("c1")
        assert str(registry.add_client("c7").client.address_v4) == "10.99.0.5"  # c3's
        assert str(registry.add_client("c8").client.address_v4) == "10.99.0.3"  # c1's
        addresses = [client.address_v4 for client in registry.clients()]
        assert len(addresses) == len(set(addresses)) == 5
        assert registry.gateway.gateway_address_v4 not in addresses


@pytest.mark.parametrize("name", ["", "has space", "a/b", "x" * 65, "ünïcode", "semi;colon"])
def test_invalid_client_names_are_refused(registry, name):
    with pytest.raises(ConfigError, match="is not a client name") as info:
        registry.add_client(name)
    assert info.value.setting == "NAME"
    assert registry.clients(include_revoked=True) == []


def test_names_of_64_allowed_characters_are_accepted(registry):
    name = "A-z_0.9" + "x" * 57
    assert registry.add_client(name).client.name == name


def test_an_active_name_is_unique_and_a_revoked_name_may_be_added_again(registry):
    original = registry.add_client("laptop").client
    with pytest.raises(ConfigError, match="'laptop' already exists"):
        registry.add_client("laptop")
    revoked = registry.revoke("laptop")
    assert revoked.revoked_at is not None and revoked.public_key == original.public_key
    assert registry.clients() == []
    again = registry.add_client("laptop").client
    assert again.public_key != original.public_key
    assert again.address_v4 != original.address_v4
    assert registry.clients() == [again]
    everyone = registry.clients(include_revoked=True)
    assert [(client.name, client.revoked_at is None) for client in everyone] == [
        ("laptop", False),
        ("laptop", True),
    ]
    assert everyone[0] == revoked
    assert registry.revoke("laptop").public_key == again.public_key


def test_revoking_an_unknown_or_revoked_client_is_a_config_error(registry):
    with pytest.raises(ConfigError, match="no client named 'ghost'"):
        registry.revoke("ghost")
    registry.add_client("laptop")
    registry.revoke("laptop")
    with pytest.raises(ConfigError, match="'laptop' is already revoked"):
        registry.revoke("laptop")


def test_version_changes_on_add_and_revoke_but_not_on_statistics(registry):
    start = registry.version()
    issued = registry.add_client("laptop")
    after_add = registry.version()
    assert after_add != start
    registry.record_stats([(issued.client.public_key, 1000.0, 10, 20)])
    assert registry.version() == after_add
    with pytest.raises(ConfigError):
        registry.add_client("laptop")  # a refused change is not a change
    assert registry.version() == after_add
    registry.revoke("laptop")
    assert registry.version() not in (start, after_add)


def test_statistics_are_stored_and_a_missing_handshake_keeps_the_last_one(registry):
    laptop = registry.add_client("laptop").client
    phone = registry.add_client("phone").client
    registry.record_stats([(laptop.public_key, 1000.0, 1500, 2048), (phone.public_key, None, 0, 0)])
    stored = {client.name: client for client in registry.clients()}
    assert (stored["laptop"].last_handshake, stored["laptop"].rx_bytes) == (1000.0, 1500)
    assert stored["laptop"].tx_bytes == 2048
    assert stored["phone"].last_handshake is None
    registry.record_stats([(laptop.public_key, None, 3000, 4096)])
    stored = {client.name: client for client in registry.clients()}
    assert (stored["laptop"].last_handshake, stored["laptop"].rx_bytes) == (1000.0, 3000)
    registry.record_stats([(b"\x01" * 32, 5.0, 1, 1)])  # a key it does not know: ignored
    registry.record_stats([])
    assert registry.clients() == list(stored.values())


def test_a_second_registry_object_sees_changes_at_once(registry, state_dir):
    with Registry.open(state_dir, crypto=crypto) as other:
        seen = other.version()
        registry.add_client("laptop")
        assert other.version() != seen
        assert [client.name for client in other.clients()] == ["laptop"]
        other.revoke("laptop")
        assert registry.clients() == []


def test_another_process_adding_a_client_changes_the_version(registry, state_dir):
    seen = registry.version()
    script = textwrap.dedent(
        f"""
        from pathlib import Path
        from tunplug.gateway.registry import Registry
        from tunplug_crypto_cryptography.backend import CryptographyBackend
        with Registry.open(Path({str(state_dir)!r}), crypto=CryptographyBackend()) as registry:
            print(registry.add_client("remote").client.address_v4)
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "100.64.0.2"
    assert registry.version() != seen
    assert [client.name for client in registry.clients()] == ["remote"]


def test_concurrent_writers_never_share_an_address(registry, state_dir):
    errors: list[BaseException] = []

    def add_many(prefix: str) -> None:
        try:
            with Registry.open(state_dir, crypto=crypto) as own:
                for number in range(15):
                    own.add_client(f"{prefix}{number}")
                    own.record_stats([(b"\x02" * 32, None, number, number)])
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=add_many, args=(prefix,)) for prefix in "abc"]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert errors == []
    addresses = [client.address_v4 for client in registry.clients()]
    assert len(addresses) == len(set(addresses)) == 45


def test_one_registry_object_can_be_shared_between_threads(registry):
    errors: list[BaseException] = []

    def work(prefix: str) -> None:
        try:
            for number in range(10):
                client = registry.add_client(f"{prefix}{number}").client
                registry.record_stats([(client.public_key, 1.0, number, number)])
                registry.version()
                registry.clients()
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(prefix,)) for prefix in "xy"]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert errors == []
    assert len(registry.clients()) == 20


# -- what is issued and what is stored --------------------------------------------------------
def test_an_issued_token_decodes_to_the_gateways_configuration(registry):
    issued = registry.add_client("laptop")
    gateway, client = registry.gateway, issued.client
    decoded = token.decode(issued.token)
    assert decoded.name == "laptop"
    config = decoded.to_config()
    assert crypto.public_key(config.private_key) == client.public_key
    assert [str(address) for address in config.addresses] == [
        f"{client.address_v4}/32",
        f"{client.address_v6}/128",
    ]
    assert list(config.dns_servers) == list(gateway.dns)
    (peer,) = config.peers
    assert peer.public_key == gateway.public_key
    assert peer.preshared_key == client.preshared_key
    # The gateway's own tunnel addresses (its control channel) and the resources.
    assert [str(n) for n in peer.allowed_ips] == [
        f"{gateway.gateway_address_v4}/32",
        f"{gateway.gateway_address_v6}/128",
        "10.20.0.0/16",
    ]
    assert decoded.control == f"{gateway.gateway_address_v4}:51820"
    assert peer.endpoint_text == ENDPOINT
    assert peer.persistent_keepalive == 25


def test_the_wg_quick_text_is_the_same_configuration_as_the_token(registry):
    issued = registry.add_client("laptop")
    parsed = parse_wg_quick(issued.wg_quick, "issued")
    assert parsed == token.decode(issued.token).to_config()
    assert f"PublicKey = {format_key(registry.gateway.public_key)}" in issued.wg_quick


def test_client_private_keys_are_never_stored(registry, state_dir):
    issued = [registry.add_client(f"c{number}") for number in range(3)]
    stored = b"".join(path.read_bytes() for path in state_dir.glob(f"{DB_NAME}*"))
    assert stored  # the check below would be empty otherwise
    for item in issued:
        private = token.decode(item.token).private_key
        assert parse_key(private) not in stored
        assert private.encode() not in stored
        assert item.client.public_key in stored
    assert registry.gateway.private_key not in stored


def test_reprs_hide_private_and_preshared_keys(registry):
    issued = registry.add_client("laptop")
    text = repr(registry.gateway) + repr(issued) + repr(registry.clients())
    private = token.decode(issued.token).private_key
    for secret in (registry.gateway.private_key, issued.client.preshared_key):
        assert repr(secret) not in text
    assert private not in text and issued.token not in text


# -- schema -----------------------------------------------------------------------------------
# Version 1 exactly as it was written (clients without the traffic columns).
V1_SCHEMA = """
CREATE TABLE gateway (
    id INTEGER PRIMARY KEY CHECK (id = 1), public_key BLOB NOT NULL, endpoint TEXT NOT NULL,
    listen_port INTEGER NOT NULL, subnet_v4 TEXT NOT NULL, subnet_v6 TEXT NOT NULL,
    resources TEXT NOT NULL, dns TEXT NOT NULL, created_at REAL NOT NULL,
    version INTEGER NOT NULL DEFAULT 0);
CREATE TABLE clients (
    id INTEGER PRIMARY KEY, name TEXT NOT NULL, public_key BLOB NOT NULL UNIQUE,
    preshared_key BLOB NOT NULL, address_index INTEGER NOT NULL, address_v4 TEXT NOT NULL,
    address_v6 TEXT NOT NULL, created_at REAL NOT NULL, revoked_at REAL);
CREATE UNIQUE INDEX clients_active_name ON clients (name) WHERE revoked_at IS NULL;
CREATE UNIQUE INDEX clients_active_address ON clients (address_index) WHERE revoked_at IS NULL;
PRAGMA user_version = 1;
"""


def write_v1_registry(state_dir: Path) -> bytes:
    """A version-1 state directory with one active and one revoked client; the gateway's
    public key."""
    state_dir.mkdir(mode=0o700)
    private = crypto.generate_private_key()
    key_file = state_dir / KEY_NAME
    key_file.write_text(format_key(private) + "\n")
    key_file.chmod(0o600)
    public = crypto.public_key(private)
    connection = sqlite3.connect(state_dir / DB_NAME)
    try:
        connection.executescript(V1_SCHEMA)
        connection.execute(
            "INSERT INTO gateway VALUES (1, ?, ?, 51820, '100.64.0.0/24', 'fd00:99::/64', "
            "'[\"10.1.0.0/16\"]', '[]', 1.0, 7)",
            (public, ENDPOINT),
        )
        for row in [
            ("old", b"\x03" * 32, 2, "100.64.0.2", "fd00:99::2", 2.0, 3.0),
            ("kept", b"\x04" * 32, 3, "100.64.0.3", "fd00:99::3", 4.0, None),
        ]:
            connection.execute(
                "INSERT INTO clients (name, public_key, preshared_key, address_index, "
                "address_v4, address_v6, created_at, revoked_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (row[0], row[1], b"\x05" * 32, *row[2:]),
            )
        connection.commit()
    finally:
        connection.close()
    (state_dir / DB_NAME).chmod(0o600)
    return public


def test_a_version_1_registry_is_migrated_on_open(tmp_path):
    state_dir = tmp_path / "state"
    public = write_v1_registry(state_dir)
    with Registry.open(state_dir, crypto=crypto) as registry:
        assert registry.gateway.public_key == public
        assert str(registry.gateway.subnet_v4) == "100.64.0.0/24"
        assert registry.version() == 7
        # Version 3: the networks init stored became resources for every client.
        assert [(r.name, r.kind, r.groups) for r in registry.resources()] == [
            ("10.1.0.0/16", "cidr", ())
        ]
        (kept,) = registry.clients()
        assert (kept.name, str(kept.address_v4), kept.created_at) == ("kept", "100.64.0.3", 4.0)
        assert (kept.last_handshake, kept.rx_bytes, kept.tx_bytes) == (None, 0, 0)
        registry.record_stats([(kept.public_key, 9.0, 100, 200)])
        assert registry.clients()[0].rx_bytes == 100
        assert str(registry.add_client("new").client.address_v4) == "100.64.0.4"
        assert len(registry.clients(include_revoked=True)) == 3
    connection = sqlite3.connect(state_dir / DB_NAME)
    try:
        assert connection.execute("PRAGMA user_version").fetchone() == (SCHEMA_VERSION,)
        assert connection.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    finally:
        connection.close()
    with Registry.open(state_dir) as again:  # already current: opening changes nothing
        assert [client.name for client in again.clients()] == ["kept", "new"]


def test_a_registry_from_a_newer_tunplug_is_refused(registry, state_dir):
    registry.close()
    connection = sqlite3.connect(state_dir / DB_NAME)
    try:
        connection.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    finally:
        connection.close()
    with pytest.raises(ConfigError, match=r"newer than this tunplug knows.*upgrade tunplug"):
        Registry.open(state_dir)


def test_clients_added_in_bulk_get_consecutive_addresses_in_one_version_step(registry):
    first = registry.add_client("first")
    version = registry.version()
    issued = registry.add_clients([f"bulk{i}" for i in range(50)])
    assert registry.version() == version + 1
    indices = [int(c.client.address_v4) - int(first.client.address_v4) for c in issued]
    assert indices == list(range(1, 51))
    assert [c.name for c in registry.clients()] == ["first"] + [f"bulk{i}" for i in range(50)]
    decoded = token.decode(issued[7].token)
    assert parse_key(decoded.private_key) != parse_key(token.decode(issued[8].token).private_key)
    assert decoded.addresses[0] == f"{issued[7].client.address_v4}/32"


def test_a_bulk_add_with_a_taken_or_repeated_name_adds_nothing(registry):
    registry.add_client("taken")
    version = registry.version()
    with pytest.raises(ConfigError, match="already exists"):
        registry.add_clients(["new1", "taken"])
    with pytest.raises(ConfigError, match="given twice"):
        registry.add_clients(["new2", "new2"])
    assert registry.version() == version
    assert [c.name for c in registry.clients()] == ["taken"]
