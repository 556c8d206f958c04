"""Debian 13's wireguard-go, fetched into a private cache without touching the system's apt.

Who calls it: ``benchmarks/throughput.py`` and ``flood.py`` (their anchor, ``--wggo-cache DIR``,
through ``benchlib.pairs``), ``clients.py``, and anyone who wants the binary for an interop run
by hand::

    sudo .venv/bin/python benchmarks/wggo.py                 # fetch if needed, print the path
    sudo .venv/bin/python benchmarks/wggo.py --cache DIR

Why: Debian 12's wireguard-go (0.0.20220316) predates wireguard-go's TUN offloads and UDP
GSO/GRO; Debian 13's 0.0.20231211 has them and is several times faster here (2.1-3.6 against
0.5-0.6 Gbit/s single stream, 2026-12-04), so it is the anchor worth comparing with. It needs
only libc, so the Debian 13 package runs on Debian 12 as it is.

How, all inside the cache directory (default ``$XDG_CACHE_HOME/tunplug/wireguard-go-trixie``,
else ``~/.cache/...``): a private ``sources.list`` with ``deb <mirror> trixie main``, where the
mirror is the first ``.../debian`` URI of the machine's own apt sources; ``apt-get update`` and
``apt-get download`` with that list and private state and cache directories (the system's
sources, lists and archives stay as they were); ``dpkg-deb -x`` into ``root/``. Nothing is done
when ``root/usr/bin/wireguard-go`` is already there; remove the directory to fetch afresh.
Needs root, as ``apt-get update`` does.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

SUITE = "trixie"
PACKAGE = "wireguard-go"
#: The Debian 13 package the anchor figures were measured with; another version still works,
#: but the report then says so.
EXPECTED_PACKAGE_VERSION = "0.0.20231211"
APT_ETC = Path("/etc/apt")
BINARY = Path("root/usr/bin/wireguard-go")
#: Debian 12's own build, from the system's apt (``scripts/dev setup``): the second anchor.
SYSTEM_BINARY = Path("/usr/bin/wireguard-go")


class FetchError(RuntimeError):
    """Debian 13's wireguard-go could not be fetched; the message is one line saying why."""


@dataclass(frozen=True, slots=True)
class WireguardGo:
    """A wireguard-go binary and what it is."""

    binary: Path
    #: What ``wireguard-go --version`` prints, e.g. ``wireguard-go v0.0.20230223``.
    version: str
    #: The Debian package version, e.g. ``0.0.20231211-1+b3`` ("unknown" when not known).
    package_version: str

    def describe(self) -> str:
        return f"{self.version} (Debian package {self.package_version}, {self.binary})"


def default_cache_dir(environ: Mapping[str, str] = os.environ) -> Path:
    """``$XDG_CACHE_HOME/tunplug/wireguard-go-trixie``, else under ``~/.cache``."""
    base = environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "tunplug" / f"wireguard-go-{SUITE}"


# --- the machine's Debian mirror ----------------------------------------------------------


def apt_source_files(etc: Path = APT_ETC) -> list[Path]:
    """The source files apt reads, in its order: ``sources.list``, then ``sources.list.d``."""
    files = [etc / "sources.list"]
    parts = etc / "sources.list.d"
    if parts.is_dir():
        files += sorted(p for p in parts.iterdir() if p.suffix in (".list", ".sources"))
    return [path for path in files if path.is_file()]


def _debian_uri(uri: str) -> str | None:
    uri = uri.rstrip("/")
    if re.fullmatch(r"https?://[^\s/]+(/[^\s]*)?/debian", uri):
        return uri
    return None


def _one_line_uris(text: str) -> Iterable[str]:
    """URIs of ``deb [options] uri suite components`` lines (``deb-src`` too)."""
    for raw in text.splitlines():
        words = raw.split("#", 1)[0].split()
        if len(words) < 2 or words[0] not in ("deb", "deb-src"):
            continue
        rest = words[1:]
        if rest[0].startswith("["):  # options: [arch=amd64 signed-by=...]
            while rest and not rest[0].endswith("]"):
                rest = rest[1:]
            rest = rest[1:]
        if rest:
            yield rest[0]


def _deb822_uris(text: str) -> Iterable[str]:
    """``URIs:`` of the enabled paragraphs of a ``.sources`` file."""
    for paragraph in re.split(r"\n\s*\n", text):
        fields: dict[str, str] = {}
        for line in paragraph.splitlines():
            if line.lstrip().startswith("#") or ":" not in line or line[:1].isspace():
                continue
            key, value = line.split(":", 1)
            fields[key.strip().lower()] = value.strip()
        if fields.get("enabled", "yes").lower() == "no":
            continue
        yield from fields.get("uris", "").split()


def debian_mirror(files: Iterable[Path]) -> str | None:
    """The first URI ending in ``/debian`` in these apt source files (None: there is none).

    Security and backports archives (``.../debian-security``) do not count: trixie's main
    suite lives on the plain mirror.
    """
    for path in files:
        try:
            text = path.read_text(errors="replace")
        except OSError:
            continue
        uris = _deb822_uris(text) if path.suffix == ".sources" else _one_line_uris(text)
        for uri in uris:
            if mirror := _debian_uri(uri):
                return mirror
    return None


# --- fetching -----------------------------------------------------------------------------


def sources_list(mirror: str) -> str:
    return f"deb {mirror} {SUITE} main\n"


def apt_command(cache: Path, *args: str) -> list[str]:
    """``apt-get`` with only the private list, and private lists and archives (none of the
    system's sources; its dpkg status is read, never written)."""
    return [
        "apt-get",
        "-q",
        "-o", f"Dir::Etc::SourceList={cache / 'sources.list'}",
        "-o", "Dir::Etc::SourceParts=/dev/null",
        "-o", f"Dir::State::Lists={cache / 'lists'}",
        "-o", f"Dir::Cache={cache / 'apt'}",
        *args,
    ]  # fmt: skip


def _run(cmd: Sequence[str], what: str, cwd: Path | None = None) -> str:
    try:
        result = subprocess.run(
            list(cmd), cwd=cwd, capture_output=True, text=True, timeout=300, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as error:
        raise FetchError(f"{what}: {error}") from None
    if result.returncode != 0:
        lines = [line for line in (result.stderr + result.stdout).splitlines() if line.strip()]
        errors = [line for line in lines if line.startswith(("E:", "dpkg-deb"))]
        reason = (errors[0] if errors else lines[-1]).strip() if lines else result.returncode
        raise FetchError(f"{what} failed: {reason}")
    return result.stdout


def binary_version(binary: Path) -> str:
    """What ``binary --version`` prints (first line).

    :raises FetchError: it does not run.
    """
    out = _run([str(binary), "--version"], f"{binary} --version").strip()
    return out.splitlines()[0] if out else "unknown"


def _cached_package_version(cache: Path) -> str:
    debs = sorted(cache.glob(f"{PACKAGE}_*.deb"))
    if not debs:
        return "unknown"
    try:
        return _run(["dpkg-deb", "-f", str(debs[-1]), "Version"], "dpkg-deb -f").strip()
    except FetchError:
        return debs[-1].name.split("_")[1]


def fetch(
    cache: Path | None = None,
    *,
    etc: Path = APT_ETC,
    log: Callable[[str], None] = print,
) -> WireguardGo:
    """Debian 13's wireguard-go in ``cache`` (default :func:`default_cache_dir`), fetched
    first if it is not there yet.

    :raises FetchError: it cannot be fetched or does not run (one line: why).
    """
    cache = (cache or default_cache_dir()).expanduser().resolve()
    binary = cache / BINARY
    if not binary.exists():
        _download(cache, etc, log)
    try:
        version = binary_version(binary)
    except FetchError as error:
        raise FetchError(f"{error} (remove {cache} to fetch it again)") from None
    if not version.startswith(f"{PACKAGE} v"):
        raise FetchError(f"{binary} --version printed {version!r}, not {PACKAGE}'s version")
    found = WireguardGo(binary, version, _cached_package_version(cache))
    if not found.package_version.startswith(EXPECTED_PACKAGE_VERSION):
        log(
            f"note: Debian 13's {PACKAGE} is {found.package_version} here; the reference "
            f"figures were measured with {EXPECTED_PACKAGE_VERSION}"
        )
    return found


def _download(cache: Path, etc: Path, log: Callable[[str], None]) -> None:
    mirror = debian_mirror(apt_source_files(etc))
    if mirror is None:
        raise FetchError(
            f"no Debian mirror (a URI ending in /debian) in {etc}/sources.list or "
            f"{etc}/sources.list.d/*.list, *.sources"
        )
    for tool in ("apt-get", "dpkg-deb"):
        if not shutil.which(tool):
            raise FetchError(f"{tool} not found (Debian's apt and dpkg are needed)")
    log(f"fetching Debian 13's {PACKAGE} from {mirror} into {cache}")
    for folder in ("lists/partial", "apt/archives/partial"):
        (cache / folder).mkdir(parents=True, exist_ok=True)
    (cache / "sources.list").write_text(sources_list(mirror))
    # --error-on=any: without it a mirror that cannot be reached is only a warning.
    _run(apt_command(cache, "update", "--error-on=any"), f"apt-get update ({SUITE} from {mirror})")
    for old in cache.glob(f"{PACKAGE}_*.deb"):
        old.unlink()
    _run(apt_command(cache, "download", f"{PACKAGE}/{SUITE}"), f"apt-get download {PACKAGE}",
         cwd=cache)  # fmt: skip
    debs = sorted(cache.glob(f"{PACKAGE}_*.deb"))
    if not debs:
        raise FetchError(f"apt-get download {PACKAGE} left no {PACKAGE}_*.deb in {cache}")
    # Extracted aside, then renamed: a half-extracted tree is never taken for a cached one.
    scratch = Path(tempfile.mkdtemp(dir=cache, prefix="extract-"))
    try:
        _run(["dpkg-deb", "-x", str(debs[-1]), str(scratch)], f"dpkg-deb -x {debs[-1].name}")
        if not (scratch / "usr/bin/wireguard-go").is_file():
            raise FetchError(f"{debs[-1].name} holds no usr/bin/wireguard-go")
        root = cache / BINARY.parts[0]
        if root.exists():
            shutil.rmtree(root)
        scratch.rename(root)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def system_wireguard_go(binary: Path = SYSTEM_BINARY) -> WireguardGo:
    """Debian 12's wireguard-go as the system has it installed.

    :raises FetchError: it is not installed (``scripts/dev setup`` installs it) or does not run.
    """
    if not binary.exists():
        raise FetchError(f"{binary} is missing (scripts/dev setup installs Debian's {PACKAGE})")
    try:
        package = _run(
            ["dpkg-query", "-W", "-f", "${Version}", PACKAGE], "dpkg-query"
        ).strip() or "unknown"  # fmt: skip
    except FetchError:
        package = "unknown"
    return WireguardGo(binary, binary_version(binary), package)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="benchmarks/wggo.py",
        description=f"Fetch Debian 13's {PACKAGE} into a private cache (the system's apt "
        "sources stay as they are) and print the binary's path.",
    )
    parser.add_argument(
        "--cache", type=Path, metavar="DIR", help=f"default {default_cache_dir()}"
    )  # fmt: skip
    args = parser.parse_args(argv)
    try:
        found = fetch(args.cache, log=lambda line: print(line, file=sys.stderr))
    except FetchError as error:
        print(f"benchmarks/wggo.py: cannot fetch Debian 13's {PACKAGE}: {error}", file=sys.stderr)
        return 1
    print(found.binary)
    print(f"{found.version}, Debian package {found.package_version}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
