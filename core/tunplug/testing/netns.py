"""Throw-away Linux network namespaces for tests and benchmarks that need real devices.

Who calls it: root-only tests (``@pytest.mark.root``) and benchmarks that create TUN devices,
veth pairs or WireGuard interfaces. Nothing here touches the host's own network namespace:
every device, address and route lives in a namespace created here, and everything is removed
on exit, also when the test fails::

    with NetNS() as a, NetNS() as b:
        veth_pair(a, b, "10.7.0.1/24", "10.7.0.2/24")
        a.run("ping", "-c1", "10.7.0.2")
        proc = python_in_ns(b, "import socket; ...")

Namespaces are named ``tp-`` followed by random hex, so parallel runs never collide. Processes
are started with ``ip netns exec``, which runs the command itself (same PID), so they can be
ended by PID. Needs root and iproute2's ``ip``; Linux only.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import subprocess
import sys
from collections.abc import Mapping, Sequence
from ipaddress import ip_interface
from types import TracebackType
from typing import Any, Self

__all__ = ["NetNS", "python_in_ns", "veth_pair"]

#: How long :meth:`NetNS.close` waits for a process after SIGTERM before SIGKILL.
TERMINATE_GRACE_SECONDS = 2.0


class NetNS:
    """A uniquely named network namespace with ``lo`` up, deleted on exit.

    ``name`` is ``prefix`` + 8 random hex digits. Processes started with :meth:`popen` (and
    :func:`python_in_ns`) are ended by PID on exit, as is anything else still running inside
    the namespace (the namespace is ours, so is everything in it).
    """

    def __init__(self, prefix: str = "tp-") -> None:
        self.name = f"{prefix}{secrets.token_hex(4)}"
        self._processes: list[subprocess.Popen[Any]] = []
        self._created = False

    def __enter__(self) -> Self:
        _ip("netns", "add", self.name)
        self._created = True
        try:
            _ip("-n", self.name, "link", "set", "lo", "up")
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc_val: BaseException | None,
        exc_tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"NetNS({self.name!r})"

    def run(
        self,
        *cmd: str,
        check: bool = True,
        timeout: float = 30.0,
        input: str | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run ``cmd`` inside the namespace, wait for it and return its captured output.

        :raises subprocess.CalledProcessError: ``check`` is true and the command failed; the
            error's ``stderr`` holds what the command printed.
        """
        return subprocess.run(
            ["ip", "netns", "exec", self.name, *cmd],
            check=check,
            capture_output=True,
            text=True,
            timeout=timeout,
            input=input,
        )

    def popen(self, *cmd: str, **kwargs: Any) -> subprocess.Popen[Any]:
        """Start ``cmd`` inside the namespace; it is ended on exit if still running.

        ``kwargs`` go to :class:`subprocess.Popen` (e.g. ``stdout=subprocess.PIPE``,
        ``text=True``). The caller closes any pipes it asked for, or :meth:`close` does.
        """
        proc: subprocess.Popen[Any] = subprocess.Popen(
            ["ip", "netns", "exec", self.name, *cmd], **kwargs
        )
        self._processes.append(proc)
        return proc

    def pids(self) -> list[int]:
        """The PIDs of every process whose network namespace is this one."""
        result = subprocess.run(
            ["ip", "netns", "pids", self.name], capture_output=True, text=True, check=False
        )
        return [int(word) for word in result.stdout.split()]

    def close(self) -> None:
        """End the processes started here, then delete the namespace. Idempotent."""
        for proc in self._processes:
            _end_process(proc)
        self._processes.clear()
        if not self._created:
            return
        # Stragglers (children of our processes) would keep the namespace and its devices
        # alive after its name is gone; they live in our namespace, so they are ours.
        for pid in self.pids():
            if pid != os.getpid():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        subprocess.run(["ip", "netns", "del", self.name], capture_output=True, check=False)
        self._created = False


def veth_pair(
    ns_a: NetNS,
    ns_b: NetNS,
    addr_a: str,
    addr_b: str,
    *,
    name_a: str = "veth-a",
    name_b: str = "veth-b",
    mtu: int | None = None,
) -> tuple[str, str]:
    """Connect two namespaces with a veth pair, address both ends and bring them up.

    ``addr_a``/``addr_b`` are interface addresses with a prefix (``"10.7.0.1/24"``,
    ``"fd00::1/64"``); IPv6 addresses skip duplicate address detection so they work at once.
    The pair is created inside ``ns_a`` with its peer placed straight into ``ns_b``, so it never
    exists in the host namespace. Returns the two interface names.
    """
    extra = ["mtu", str(mtu)] if mtu is not None else []
    _ip(
        "-n", ns_a.name, "link", "add", name_a, *extra,
        "type", "veth", "peer", "name", name_b, "netns", ns_b.name,
    )  # fmt: skip
    for ns, name, addr in ((ns_a, name_a, addr_a), (ns_b, name_b, addr_b)):
        nodad = ["nodad"] if ip_interface(addr).version == 6 else []
        _ip("-n", ns.name, "addr", "add", addr, "dev", name, *nodad)
        _ip("-n", ns.name, "link", "set", name, "up")
    return name_a, name_b


def python_in_ns(
    ns: NetNS,
    code_or_module: str,
    *args: str,
    module: bool = False,
    env: Mapping[str, str] | None = None,
    **popen_kwargs: Any,
) -> subprocess.Popen[Any]:
    """Run this interpreter (``sys.executable``) inside ``ns`` and return the process.

    ``code_or_module`` is a script path when it names an existing ``.py`` file, a module name
    when ``module`` is true (``python -m``), and otherwise source code (``python -c``). The
    child sees the parent's ``sys.path`` through ``PYTHONPATH``, so packages importable here
    (also from a source checkout) are importable there. ``env`` adds variables.
    """
    argv: Sequence[str]
    if module:
        argv = ("-m", code_or_module)
    elif code_or_module.endswith(".py") and os.path.isfile(code_or_module):
        argv = (code_or_module,)
    else:
        argv = ("-c", code_or_module)
    child_env = dict(os.environ)
    child_env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p and os.path.isdir(p))
    if env:
        child_env.update(env)
    return ns.popen(sys.executable, *argv, *args, env=child_env, **popen_kwargs)


def _ip(*args: str) -> None:
    result = subprocess.run(["ip", *args], capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {result.stderr.strip()}")


def _end_process(proc: subprocess.Popen[Any]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(TERMINATE_GRACE_SECONDS)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    for stream in (proc.stdin, proc.stdout, proc.stderr):
        if stream is not None:
            stream.close()
