"""A CPU test server (``nemotron_sglang.testing.cpu_server``) dies with the process that started
it: a Python process starts a ``CPUServer`` and is SIGKILLed (as a suite killed by a timeout
would be); within ``DEATH_BOUND_S`` the server's port stops answering, its process group has no
live process, and the watchdog has exited. The server is a stand-in with SGLang's shape (a main
process answering ``/health`` on ``--port`` and a child process of its own, as launch_server's
scheduler and detokenizer are), so the test costs seconds, not an SGLang start."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request


from nemotron_sglang.testing.cpu_server import WATCHDOG_GRACE_S, live_group_members

# the watchdog SIGTERMs at once and SIGKILLs after its grace; plus the 1 s of its EOF poll and
# slack for a loaded machine
DEATH_BOUND_S = 2 * WATCHDOG_GRACE_S + 15

# the stand-in server: a child process of its own, then /health on the port CPUServer passes
SERVER = r"""
import http.server, subprocess, sys
port = int(sys.argv[sys.argv.index("--port") + 1])
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(3600)"])
class Health(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200)
        self.end_headers()
    def log_message(self, *args):
        pass
http.server.HTTPServer(("127.0.0.1", port), Health).serve_forever()
"""
STARTER = r"""
import sys, time
from pathlib import Path
from nemotron_sglang.testing.cpu_server import CPUServer
s = CPUServer(None, Path(sys.argv[1]), command=[sys.executable, "-c", sys.argv[2]])
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
        starter = subprocess.Popen([sys.executable, "-c", STARTER, str(log), SERVER], text=True,
                                   stdout=subprocess.PIPE, stderr=err_out)
    pgid = watchdog = None
    try:
        line = starter.stdout.readline()          # the server's start: up to minutes when loaded
        assert line.startswith("UP "), (line, err.read_text()[-3000:])
        pgid, port, watchdog = map(int, line.split()[1:])
        assert answers(port)
        assert pgid in live_group_members(pgid), "the server leads its own process group"
        assert len(live_group_members(pgid)) >= 2, "the server and its child"
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


def test_a_port_taken_meanwhile_is_drawn_again(tmp_path, monkeypatch):
    """The port ``free_port`` drew is taken before the server binds it (as a client connection
    of the server's own could take a kernel-picked port): the server's bind fails, CPUServer
    stops that start at once and starts again on a fresh port. The negative control: with the
    port given, the same collision raises at once instead of waiting ``wait_s``."""
    import socket

    from nemotron_sglang.testing import cpu_server

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = taken.getsockname()[1]
        picks = iter([busy, cpu_server.free_port()])
        monkeypatch.setattr(cpu_server, "free_port", lambda: next(picks))
        with cpu_server.CPUServer(None, tmp_path / "server.log",
                                  command=[sys.executable, "-c", SERVER], wait_s=120) as s:
            assert s.port != busy and answers(s.port)
            assert live_group_members(s.proc.pid)
        assert not live_group_members(s.proc.pid)

        started = time.monotonic()
        try:
            cpu_server.CPUServer(None, tmp_path / "given.log", port=busy,
                                 command=[sys.executable, "-c", SERVER], wait_s=120)
        except RuntimeError as e:
            assert "port taken" in str(e)
        else:
            raise AssertionError("a server on a taken port came up")
        assert time.monotonic() - started < 60
