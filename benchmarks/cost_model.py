"""Measure the adaptive block's cost table on this device and write it into a launch YAML.

The table (``core.block_policy.CostTable``) is the time of one forward of R rows × b tokens for
R in 1, 2, 4, ..., 64 and b in 1, 2, 4, ..., B (b = 1: an AR decode row; b > 1: a draft or
verify block), each row after ``--context`` committed tokens. It is measured with core's model on
the checkpoint's own weights and dtype, on this machine's device, with the thread count the
server runs (1 OpenMP thread per process on the CPU, as ``nemotron-sglang serve`` sets):
the same PyTorch layers and per-row attention the server's custom pass runs, without the
scheduler around them. With ``--server`` (how the shipped CPU table was made) each cell is
measured through the real server instead: R concurrent requests decoding at block b
(``linear_spec``, or ``ar`` for b = 1), wall time per round step, so the scheduler's and the
host decisions' per-step costs are in the table too. Each cell is the fastest of ``--reps`` runs, and the table is made
monotone (running max along rows and blocks) against measurement noise.

    python benchmarks/cost_model.py                                   # print the table
    python benchmarks/cost_model.py --write launch/tri_mode.yaml      # and store it there
    python benchmarks/cost_model.py --server --json nemotron_sglang/serving/cost_cpu.json \
        --write launch/tri_mode.yaml                                     # the shipped CPU table
    python benchmarks/cost_model.py --preset 8b --json cost_cuda_8b.json     # on a GPU

``--write`` replaces the YAML's ``cost_model:`` block (or appends one) and keeps every other
line; ``--json`` writes the table alone (what ``serve --cost-model`` reads; the CPU table of the
embedded default ships in the package).
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
from nemotron_sglang.testing.bench import hardware, post_generate, print_table  # noqa: E402
from nemotron_sglang.testing.cpu_server import CPUServer  # noqa: E402

from nemotron_sglang.core.attention import BIDIRECTIONAL, CAUSAL  # noqa: E402
from nemotron_sglang.core.batch import ForwardBatch, PassRow  # noqa: E402
from nemotron_sglang.core.block_policy import CostTable, candidate_blocks  # noqa: E402
from nemotron_sglang.core.config import preset  # noqa: E402
from nemotron_sglang.core.kv_cache import PagedKVCache  # noqa: E402
from nemotron_sglang.core.model import NLDModel  # noqa: E402
from nemotron_sglang.core.weights import load_model  # noqa: E402
from nemotron_sglang.data import EMBEDDED as FIXTURE  # noqa: E402

ROWS = (1, 2, 4, 8, 16, 32, 64)


def measure(model, rows: int, block: int, context: int, reps: int) -> float:
    cfg = model.config
    page = 16
    per = -(-(context + block) // page)
    cache = PagedKVCache(num_layers=cfg.num_hidden_layers, num_kv_heads=cfg.num_key_value_heads,
                         head_dim=cfg.head_dim, num_pages=rows * per, page_size=page,
                         dtype=model.dtype, device=model.diffusion_head.weight.device,
                         shuffle_seed=0)
    for sid in range(rows):
        cache.add(sid)
        cache.append(sid, context)
        cache.commit(sid, context)
    mask = CAUSAL if block == 1 else BIDIRECTIONAL
    batch = ForwardBatch.from_rows(
        [PassRow(sid, [(11 * sid + i) % 200 + 5 for i in range(block)],
                 list(range(context, context + block)), context, mask) for sid in range(rows)],
        device=cache.k.device)

    def once():
        logits = model(batch, cache, lazy=True)
        logits.prefetch(range(batch.num_tokens))        # a verify reads every row
        if torch.cuda.is_available():
            torch.cuda.synchronize()
    once()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        once()
        times.append(time.perf_counter() - t0)
    return min(times) * 1e3            # the least disturbed run: other processes only add time


def monotone(ms: list[list[float]]) -> list[list[float]]:
    """Running max along rows, and along blocks from 2 on: a step with more rows, or longer
    draft rows, never costs less (what measurement noise can suggest). The ar column (block 1)
    is left out of the block direction: an ar step is a whole scheduler round, a linear_spec
    step half of one, so through the server an ar step may cost more than a block-2 step."""
    out = [list(r) for r in ms]
    for i in range(len(out)):
        for j in range(len(out[i])):
            left = out[i][j - 1] if j >= 2 else 0.0
            out[i][j] = max(out[i][j], out[i - 1][j] if i else 0.0, left)
    return out


def measure_server(url: str, prompts, rows: int, block: int, tokens: int) -> float:
    """ms per step of the real server's round: ``rows`` concurrent requests decoding at
    ``block`` (1 = ar, else linear_spec), ignore_eos, ``tokens`` each; wall time / the steps
    the requests ran in lockstep (the most forwards of any of them)."""
    from concurrent.futures import ThreadPoolExecutor

    custom = {"decode_mode": "ar"} if block == 1 else {"decode_mode": "linear_spec",
                                                        "block_length": block}

    def one(ids):
        body = {"input_ids": ids, "sampling_params": {"max_new_tokens": tokens, "temperature": 0,
                                                      "ignore_eos": True, "custom_params": custom}}
        return post_generate(url, body)["meta_info"]["nld_forwards"]
    t0 = time.perf_counter()
    with ThreadPoolExecutor(rows) as pool:
        forwards = list(pool.map(one, [prompts[i % len(prompts)] for i in range(rows)]))
    return (time.perf_counter() - t0) / max(forwards) * 1e3


def server_table(model: Path, port: int, context: int, tokens: int) -> list[list[float]]:
    """The table measured through ``sglang.launch_server`` with the plugin on this CPU."""
    blocks = candidate_blocks(json.loads((model / "config.json").read_text())["block_size"])
    prompts = [[(7 * k + i) % 200 + 20 for i in range(context)] for k in range(64)]
    server = CPUServer(model, Path("/tmp/nemotron_cost_model.log"),
                       ["--dllm-algorithm", "NemotronTriMode", "--max-running-requests",
                        str(ROWS[-1]), "--max-total-tokens", "32768"], port=port)
    try:
        url = server.url
        measure_server(url, prompts, 1, 8, 16)                       # warm-up
        return [[measure_server(url, prompts, r, b, tokens) for b in blocks] for r in ROWS]
    finally:
        server.stop()


def write_yaml(path: Path, table: CostTable, command: str) -> None:
    lines = path.read_text().splitlines() if path.exists() else []
    out, skipping = [], False
    for line in lines:
        if line.startswith("cost_model:"):
            skipping = True
            continue
        if skipping and (line.startswith(" ") or line.startswith("#   ") or not line.strip()):
            continue
        skipping = False
        out.append(line)
    d = table.to_mapping()
    out += [f"cost_model:        # ms per forward of rows x block tokens; {command}",
            f"  device: \"{d['device']}\"",
            f"  rows: {d['rows']}",
            f"  blocks: {d['blocks']}",
            "  ms:"]
    out += [f"    - {row}" for row in d["ms"]]
    path.write_text("\n".join(out) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", type=Path, default=FIXTURE)
    ap.add_argument("--preset", default=None, help="3b | 8b | 14b: random weights at those shapes")
    ap.add_argument("--context", type=int, default=128)
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--server", action="store_true",
                    help="measure through a CPU sglang server with the plugin (every per-step "
                         "cost of the round included) instead of core's forward alone")
    ap.add_argument("--port", type=int, default=30129)
    ap.add_argument("--tokens", type=int, default=96, help="--server: tokens per request")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch threads (default: 1 on the CPU, as the server)")
    ap.add_argument("--write", type=Path, default=None)
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--markdown", action="store_true")
    args = ap.parse_args()
    cuda = torch.cuda.is_available()
    torch.set_num_threads(args.threads or (torch.get_num_threads() if cuda else 1))
    dtype = torch.bfloat16 if cuda else torch.float32
    if args.preset:                     # random weights at a released model's shapes
        cfg = preset(args.preset)
        old = torch.get_default_dtype()
        torch.set_default_dtype(dtype)
        try:
            with torch.device("cuda" if cuda else "cpu"):
                model = NLDModel(cfg).eval()
        finally:
            torch.set_default_dtype(old)
    else:
        model = load_model(args.model, dtype=dtype)
        if cuda:
            model = model.cuda()
    if cuda:
        model.rotary.inv_freq = model.rotary.inv_freq.cuda()
    blocks = tuple(candidate_blocks(model.config.block_size))
    if args.server:
        raw = server_table(args.model, args.port, args.context, args.tokens)
    else:
        raw = [[measure(model, r, b, args.context, args.reps) for b in blocks] for r in ROWS]
    print("# raw: " + json.dumps([[round(v, 2) for v in row] for row in raw]))
    ms = tuple(tuple(row) for row in monotone(raw))
    device = f"{hardware(triton_interpret=False)}, " + (
        "measured through the server (round steps)" if args.server
        else f"core forward, {torch.get_num_threads()} thread(s)")
    table = CostTable(ROWS, blocks, ms, device=device)
    command = f"python benchmarks/cost_model.py {shlex.join(sys.argv[1:])}".strip()
    name = f"preset {args.preset} (random weights)" if args.preset else args.model.name
    print(f"# {device}; model {name}, {dtype}, context {args.context}; {command}")
    print_table(["rows \\ block"] + [str(b) for b in blocks],
                [[r] + list(row) for r, row in zip(ROWS, ms)], args.markdown)
    if args.write:
        write_yaml(args.write, table, command)
        print(f"# wrote cost_model into {args.write}")
    if args.json:
        args.json.write_text(json.dumps({**table.to_mapping(), "command": command}, indent=1)
                             + "\n")
        print(f"# wrote {args.json}")


if __name__ == "__main__":
    main()
