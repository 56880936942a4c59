"""A CPU test server (``nemotron_sglang.testing.cpu_server``) dies with the process that started
it: a Python process starts a real SGLang server of the embedded checkpoint and is SIGKILLed (as a
suite killed by a timeout would be); within ``DEATH_BOUND_S`` the server's port stops answering,
its process group has no live process, and the watchdog has exited."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request

import pytest

pytest.importorskip("sglang")

from nemotron_sglang.testing.cpu_server import WATCHDOG_GRACE_S, live_group_members  # noqa: E402

# the watchdog SIGTERMs at once and SIGKILLs after its grace; plus the 1 s of its EOF poll and
# slack for a loaded machine
DEATH_BOUND_S = 2 * WATCHDOG_GRACE_S + 15

STARTER = r"""
import sys, time
from pathlib import Path
from nemotron_sglang.data import EMBEDDED
from nemotron_sglang.testing.cpu_server import CPUServer
s = CPUServer(EMBEDDED, Path(sys.argv[1]), ["--max-total-tokens", "4096"])
print("UP", s.proc.pid, s.port, s.watchdog.pid, flush=True)
time.sleep(3600)
"""


def answers(port: int) -> bool:
    try:
        urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5)
        return True
    except OSError:
        return False


def test_server_group_dies_when_its_starter_is_sigkilled(tmp_path):
    log, err = tmp_path / "server.log", tmp_path / "starter.err"
    with open(err, "w") as err_out:
        starter = subprocess.Popen([sys.executable, "-c", STARTER, str(log)], text=True,
                                   stdout=subprocess.PIPE, stderr=err_out)
    pgid = watchdog = None
    try:
        line = starter.stdout.readline()          # the server's start: up to minutes when loaded
        assert line.startswith("UP "), (line, err.read_text()[-3000:])
        pgid, port, watchdog = map(int, line.split()[1:])
        assert answers(port)
        assert pgid in live_group_members(pgid), "the server leads its own process group"
        assert live_group_members(watchdog) == [watchdog], "the watchdog runs in its own group"

        starter.kill()                            # SIGKILL: no cleanup of the starter's runs
        starter.wait(timeout=30)
        t0 = time.monotonic()
        while time.monotonic() - t0 < DEATH_BOUND_S:
            if not live_group_members(pgid) and not live_group_members(watchdog) and \
                    not answers(port):
                break
            time.sleep(0.5)
        took = time.monotonic() - t0
        print(f"{took:.1f} s after the starter's SIGKILL: {live_group_members(pgid)} alive")
        assert not live_group_members(pgid), (f"server group alive {took:.0f} s after SIGKILL",
                                              log.read_text()[-2000:])
        assert not answers(port)
        assert not live_group_members(watchdog), "the watchdog outlived the group"
    finally:                                      # never leave a server behind, pass or fail
        if starter.poll() is None:
            starter.kill()
            starter.wait()
        for group in (pgid, watchdog):
            if group is not None and live_group_members(group):
                os.killpg(group, signal.SIGKILL)
