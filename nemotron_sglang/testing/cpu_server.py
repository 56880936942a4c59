"""A real SGLang server process on the CPU, for the tests and the benchmarks: ``sglang.launch_server``
(torch_native attention, fp32, ``OMP_NUM_THREADS=1``, the plugin's CPU platform) on a loopback
port drawn below the kernel's ephemeral range, polled until healthy, started again on a fresh port
if its own was taken meanwhile, stopped with its whole process group; plus a JSON POST.

The server's process group also dies with the process that started it, even one killed by
SIGKILL (a suite killed by a timeout): a watchdog (``python -m nemotron_sglang.testing.cpu_server
PGID``, in a session of its own so a signal to the starter's group spares it) reads a pipe whose
write end only the starter holds; EOF on it — the starter closed it or died — makes the watchdog
SIGTERM the group, then SIGKILL what is left. (SGLang's own scheduler and detokenizer processes
only follow ``launch_server``'s main process, by ``PR_SET_PDEATHSIG``; nothing kills that one.)"""

from __future__ import annotations

import collections
import json
import os
import random
import select
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path


WATCHDOG_GRACE_S = 30.0      # SIGTERM to SIGKILL, for the watchdog as for ``stop``


def live_group_members(pgid: int) -> list[int]:
    """The pids of the live (not zombie) processes in process group ``pgid`` (Linux ``/proc``)."""
    pids = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            stat = Path("/proc", name, "stat").read_text()
        except OSError:                                   # exited meanwhile
            continue
        state, _ppid, pgrp = stat[stat.rindex(")") + 2:].split()[:3]   # after "pid (comm) "
        if int(pgrp) == pgid and state not in "ZX":
            pids.append(int(name))
    return pids


def watch(pgid: int, grace_s: float = WATCHDOG_GRACE_S) -> None:
    """The watchdog's loop, stdin the read end of the starter's pipe: returns when group ``pgid``
    has no live process left (checked every second), or, after EOF on stdin, once it has SIGTERMed
    the group and SIGKILLed whatever outlived ``grace_s``."""
    while live_group_members(pgid):
        if select.select([sys.stdin], [], [], 1.0)[0] and not os.read(sys.stdin.fileno(), 4096):
            break                                          # EOF: the starter is gone
    else:
        return
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + grace_s
        while live_group_members(pgid):
            if time.monotonic() > deadline:
                break
            time.sleep(0.2)
        else:
            return


def _proc_net_listeners() -> dict[int, tuple[str, int]]:
    """Socket inode -> (address, port) of every listening TCP socket (``/proc/net/tcp``,
    ``tcp6``; state 0A)."""
    import ipaddress

    out = {}
    for name, width in (("tcp", 4), ("tcp6", 16)):
        try:
            lines = Path("/proc/net", name).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            local, state, inode = fields[1], fields[3], int(fields[9])
            if state != "0A":
                continue
            hex_ip, hex_port = local.split(":")
            raw = bytes.fromhex(hex_ip)
            # the kernel prints each 32-bit word in host (little-endian) order
            raw = b"".join(raw[i:i + 4][::-1] for i in range(0, width, 4))
            out[inode] = (str(ipaddress.ip_address(raw)), int(hex_port, 16))
    return out


def listening_addresses(pgid: int) -> set[tuple[str, int]]:
    """(address, port) of every TCP socket a live process of group ``pgid`` listens on: what a
    server advertises to the network (Linux ``/proc``)."""
    listeners = _proc_net_listeners()
    found = set()
    for pid in live_group_members(pgid):
        try:
            fds = list(Path("/proc", str(pid), "fd").iterdir())
        except OSError:
            continue
        for fd in fds:
            try:
                target = os.readlink(fd)
            except OSError:
                continue
            if target.startswith("socket:["):
                inode = int(target[8:-1])
                if inode in listeners:
                    found.add(listeners[inode])
    return found


def _ephemeral_low() -> int:
    """The first port of the kernel's ephemeral range (``bind(0)`` and every outgoing connection
    draw from it)."""
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


_HANDED_OUT: collections.deque[int] = collections.deque(maxlen=256)   # this process's recent picks


def free_port() -> int:
    """A free loopback port, for a server to bind later, drawn from 10000..21999: below the
    kernel's ephemeral range, so none of the server's own outgoing connections (a client of torch's
    distributed store, a ZMQ socket) can take it meanwhile, and below SGLang's own picks
    (22000..29999); never one this process handed out recently (a test's servers and side ports
    are live together). Dynamo 1.6.1 reads ``DYN_SYSTEM_PORT`` as an i16, which this range
    also suits."""
    high = min(22000, _ephemeral_low())
    for port in random.Random().sample(range(10000, high), 200):
        if port in _HANDED_OUT:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        _HANDED_OUT.append(port)
        return port
    raise RuntimeError(f"no free port in 10000..{high - 1}")


def post(url: str, body, timeout: float = 120) -> tuple[int, str]:
    """POST ``body`` as JSON to ``url``; (HTTP status, response text), errors included."""
    req = urllib.request.Request(url, data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def launch_command(model: Path) -> list[str]:
    """SGLang's server of ``model`` on the CPU (the flags every CPU run needs)."""
    return [sys.executable, "-m", "sglang.launch_server", "--model-path", str(model),
            "--device", "cpu", "--host", "127.0.0.1", "--attention-backend", "torch_native",
            "--dtype", "float32"]


BIND_FAILED = "address already in use"    # uvicorn's and Rust's bind error, lower-cased
BIND_TRIES = 3


class CPUServer:
    """``command`` (default: ``launch_command(model)``) + ``port_flag`` + ``extra``, with
    ``env`` added to the environment and the output in ``log``; up (``/health`` answers 200 on
    the port) when the constructor returns, which waits up to ``wait_s`` (a loaded 2-core
    machine needs minutes). ``port_flag=None``: the command takes its port from ``env``.

    A server whose log says its port was taken meanwhile is stopped at once (SGLang's does not
    exit: it waits on its scheduler for ever) and, when this class drew the port, started again
    on a fresh one, up to ``BIND_TRIES`` times."""

    def __init__(self, model: Path | None, log: Path, extra: list[str] = (),
                 command: list[str] | None = None, env: dict[str, str] | None = None,
                 port: int | None = None, wait_s: float = 600, port_flag: str | None = "--port"):
        self.log = Path(log)
        env = dict(os.environ, NEMOTRON_SGLANG_CPU_PLATFORM="1", OMP_NUM_THREADS="1", **(env or {}))
        for _ in range(1 if port else BIND_TRIES):
            self.port = port or free_port()
            self.url = f"http://127.0.0.1:{self.port}"
            cmd = [*(command or launch_command(model)),
                   *([port_flag, str(self.port)] if port_flag else []), *extra]
            if self._start(cmd, env, wait_s):
                return
        raise RuntimeError(f"port taken on each of {BIND_TRIES} tries:\n"
                           f"{self.log.read_text()[-3000:]}")

    def _start(self, cmd: list[str], env: dict[str, str], wait_s: float) -> bool:
        """Start ``cmd`` and wait until it is healthy (True) or its port was taken (False, the
        server stopped); a server that exits or stays down ``wait_s`` raises, stopped."""
        with open(self.log, "w") as out:
            self.proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env,
                                         start_new_session=True)
        # the pipe's write end is not inheritable: only this process holds it (module docstring)
        with open(self.log, "a") as out:
            self.watchdog = subprocess.Popen(
                [sys.executable, "-m", "nemotron_sglang.testing.cpu_server", str(self.proc.pid)],
                stdin=subprocess.PIPE, stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True)
        deadline = time.time() + wait_s
        while time.time() < deadline:
            if BIND_FAILED in self.log.read_text(errors="replace").lower():
                self.stop()
                return False
            if self.proc.poll() is not None:
                self.stop()
                raise RuntimeError(f"server exited:\n{self.log.read_text()[-3000:]}")
            try:
                urllib.request.urlopen(self.url + "/health", timeout=2)
                return True
            except OSError:                     # URLError, a refused or reset connection
                time.sleep(1.0)
        self.stop()
        raise RuntimeError(f"server did not come up:\n{self.log.read_text()[-3000:]}")

    def post(self, path: str, body, timeout: float = 120) -> tuple[int, str]:
        return post(self.url + path, body, timeout)

    def post_json(self, path: str, body, timeout: float = 1800):
        """The decoded answer of a POST that must succeed (an error status raises)."""
        status, text = self.post(path, body, timeout)
        if status != 200:
            raise RuntimeError(f"POST {path}: HTTP {status}: {text[:2000]}")
        return json.loads(text)

    def stop(self) -> None:
        """Stop the whole process group: SIGTERM, SIGKILL after ``WATCHDOG_GRACE_S``; returns when
        no process of the group is alive (the watchdog, told by EOF, waits for the rest)."""
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=WATCHDOG_GRACE_S)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)
        if self.watchdog.stdin and not self.watchdog.stdin.closed:
            self.watchdog.stdin.close()
        self.watchdog.wait(timeout=2 * WATCHDOG_GRACE_S + 10)

    def __enter__(self) -> "CPUServer":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


if __name__ == "__main__":
    watch(int(sys.argv[1]))
