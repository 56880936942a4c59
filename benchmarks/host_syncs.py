"""Host syncs per canvas step on the real server (issue 35 item 5): every device→host read and
blocking host→device copy of a whole step — building the pass, the custom pass with the model's
forward and its attention, the decisions — counted by ``nemotron_sglang.testing.host_reads``
inside the server's scheduler (``testing.host_sync_probe``: a ``sitecustomize``, no product
change).

    python benchmarks/host_syncs.py                    # CPU server on the embedded fixture
    python benchmarks/host_syncs.py --block 32 --max-tokens 32 --markdown

Per mode (``--batch`` greedy requests of the mode in one call, then "mixed": one of each mode in
one call): canvas steps measured, reads per step (max and mean), elements read per step, reads
per step by op and by call site, blocking uploads per step (max and mean) and a round's reads
outside its steps. The custom pass runs the Triton attention (``custom_attention: triton``, the
default on CUDA; on CPU under ``TRITON_INTERPRET=1``, whose own copies are not counted), so the
count is what a GPU step syncs on; on a CPU run a tensor's place on a GPU run is simulated
(host_reads' docstring). The GPU-step issue drives these numbers to zero; the test's ratchet is
tests/sglang/test_host_syncs.py.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import tempfile
from pathlib import Path

import torch

from nemotron_sglang.data import EMBEDDED as FIXTURE
from nemotron_sglang.testing.bench import hardware, print_table
from nemotron_sglang.testing.host_sync_probe import measure, probe_server

PROMPTS = [[5, 6, 7, 8, 300, 301], [17, 400, 23], [250, 251, 252, 253, 254, 255, 256, 257]]


def rows(stats: dict[str, dict]) -> list[list]:
    def top(d: dict) -> str:
        return ", ".join(f"{v:.2g} {k}" for k, v in d.items()) or "-"
    return [[label, s["steps"], s["max_reads"], s["reads"], s["elements"], top(s["ops"]),
             top(s["sites"]), s["max_uploads"], s["uploads"], s["round_outside_steps"]]
            for label, s in stats.items()]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", type=Path, default=FIXTURE)
    p.add_argument("--block", type=int, default=4)
    p.add_argument("--max-tokens", type=int, default=8)
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--port", type=int, default=None)
    p.add_argument("--markdown", action="store_true")
    a = p.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="host_syncs-"))
    log = folder / "reads.jsonl"
    server = probe_server(a.model, a.block, folder, log, a.port)
    try:
        stats = measure(server, log, PROMPTS, a.max_tokens, a.batch)
    finally:
        server.stop()
    print(f"# {hardware(triton_interpret=not torch.cuda.is_available())}")
    print(f"# {shlex.join([sys.executable, *sys.argv])}")
    print(f"# model {a.model.name}, block {a.block}, {a.max_tokens} new tokens, batch {a.batch} "
          f"per mode, greedy, custom_attention triton; server log {folder / 'server.log'}")
    print_table(["mode", "steps", "reads/step max", "reads/step", "elements/step",
                 "reads/step by op", "reads/step by site", "uploads/step max", "uploads/step",
                 "round reads outside steps"], rows(stats), markdown=a.markdown)


if __name__ == "__main__":
    main()
