"""Model forward cost F(batch, query tokens) for 8B-shaped random weights through core + kernels.

Builds ``NLDModel`` from ``core.config.preset("8b")`` (34 layers, hidden 4096, 32/8 heads,
head_dim 128, vocab 131072) with random bf16 weights directly on the GPU, a paged KV cache
holding ``--context`` committed tokens per request (pages shuffled), and times one forward for
every batch size × query length: 1 = AR decode (causal), B = block pass (bidirectional:
diffusion denoise / self-spec draft), B·(B+1) = quadratic self-spec pass. Prints the hardware,
dtype and shapes, the measured copy bandwidth and bf16 matmul rate, and per cell the forward
time (eager and CUDA-graph replay), tokens/s, and the ratio to a roofline floor
max(bytes / copy bandwidth, FLOPs / matmul rate), plus F(q)/F(1) at each batch.

    python benchmarks/forward_cost.py               # GPU: 8B, batches 1,4,16,64 × q 1,32,1056
    python benchmarks/forward_cost.py --markdown --batches 1,4 --queries 1,32
    python benchmarks/forward_cost.py --smoke               # CPU: tiny preset, Triton interpreter

What a forward is here: embeddings -> 34 decoder layers (core's PyTorch layers; attention by
``--attention``, default our Triton kernel with metadata built once per forward, the host
build time reported separately) -> final norm -> LM head over every query token in chunks of
8192 rows, keeping the argmax (a 67584 × 131072 logits tensor would not fit). KV writes are
left out (a scatter of a few MB). Without CUDA (and without ``--smoke``) it prints the plan
and exits 0.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import time

import torch

from nemotron_sglang.testing.bench import hardware, print_table

SMOKE = "--smoke" in sys.argv
if SMOKE and not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"         # before any Triton kernel is decorated

from nemotron_sglang.core.attention import BIDIRECTIONAL, CAUSAL, MaskKind, quadratic  # noqa: E402
from nemotron_sglang.core.batch import ForwardBatch, PassRow  # noqa: E402
from nemotron_sglang.core.config import preset  # noqa: E402
from nemotron_sglang.core.decoding.quadratic_spec import quadratic_layout  # noqa: E402
from nemotron_sglang.core.kv_cache import PagedKVCache  # noqa: E402
from nemotron_sglang.core.model import NLDModel  # noqa: E402
from nemotron_sglang.core.rope import Rotary  # noqa: E402
from nemotron_sglang.kernels import ATTENTION_IMPLS, attention_for_forward  # noqa: E402

HEAD_CHUNK = 8192


def mask_for(q_len: int, block: int):
    if q_len == 1:
        return CAUSAL, "AR decode"
    if q_len == block * (block + 1):
        return quadratic(block), f"quadratic B={block}"
    return BIDIRECTIONAL, "block pass"


def build_model(cfg, dtype, device):
    old = torch.get_default_dtype()
    torch.manual_seed(0)
    try:
        torch.set_default_dtype(dtype)
        with torch.device(device):
            model = NLDModel(cfg)
    finally:
        torch.set_default_dtype(old)
    model.rotary = Rotary(cfg)
    model.rotary.inv_freq = model.rotary.inv_freq.to(device)
    return model.eval()


def make_batch(cache, batch: int, q_len: int, context: int, mask, device) -> ForwardBatch:
    """``batch`` rows of ``q_len`` new tokens after ``context`` cached ones (quadratic rows laid
    out as the quadratic decoder lays them out)."""
    rows = []
    for sid in range(batch):
        ids = [(7 * sid + i) % 1000 + 200 for i in range(q_len)]
        pos = list(range(context, context + q_len))
        if mask.kind == MaskKind.QUADRATIC:
            heads = ids[: mask.rows(q_len)]
            ids, pos = quadratic_layout(heads, mask.block, context, mask_id=100)
        rows.append(PassRow(sid, ids, pos, context, mask))
    return ForwardBatch.from_rows(rows, device=device)


def new_cache(cfg, batch, context, max_q, page_size, dtype, device) -> PagedKVCache:
    per = -(-(context + max_q) // page_size)
    cache = PagedKVCache(num_layers=cfg.num_hidden_layers, num_kv_heads=cfg.num_key_value_heads,
                         head_dim=cfg.head_dim, num_pages=batch * per, page_size=page_size,
                         dtype=dtype, device=device, shuffle_seed=0)
    for sid in range(batch):
        cache.add(sid)
        if context:
            cache.append(sid, context)
            cache.commit(sid, context)
    return cache


@torch.no_grad()
def forward(model, batch, cache, attention_fn):
    """One forward as described in the module docstring; returns the argmax ids [T]."""
    x = model.encoder.embed_tokens(batch.input_ids)
    for layer in model.encoder.layers:
        x = layer(x, batch, cache, model.rotary, None, None, attention_fn)
    x = model.encoder.norm(x)
    return torch.cat([model.diffusion_head(x[i: i + HEAD_CHUNK]).argmax(-1)
                      for i in range(0, x.shape[0], HEAD_CHUNK)])


def time_eager(fn, reps: int, cuda: bool) -> float:
    fn()
    if cuda:
        torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        if cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2] * 1e3


def time_graph(fn, reps: int) -> float:
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        fn()
    torch.cuda.current_stream().wait_stream(s)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        fn()
    g.replay()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    times = []
    for _ in range(reps):
        start.record()
        g.replay()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    del g
    return sorted(times)[len(times) // 2]


def copy_bandwidth() -> float:
    n = 1 << 30
    a = torch.empty(n, dtype=torch.uint8, device="cuda")
    b = torch.empty_like(a)
    return 2 * n / (time_graphless(lambda: b.copy_(a)) * 1e-3) / 1e9


def matmul_rate(dtype) -> float:
    n = 8192
    a = torch.randn(n, n, device="cuda", dtype=dtype)
    b = torch.randn(n, n, device="cuda", dtype=dtype)
    return 2 * n ** 3 / (time_graphless(lambda: a @ b) * 1e-3) / 1e12


def time_graphless(fn, reps: int = 20) -> float:
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(reps):
        fn()
    end.record()
    end.synchronize()
    return start.elapsed_time(end) / reps


def roofline(cfg, batch, q_len, context, mask, elt, bw_gbs, tflops) -> float:
    """Floor in ms: max(bytes / bandwidth, FLOPs / matmul rate). Embedding rows not counted."""
    h, L = cfg.hidden_size, cfg.num_hidden_layers
    layer_params = (h * cfg.q_size + 2 * h * cfg.kv_size + cfg.q_size * h
                    + 3 * h * cfg.intermediate_size)
    dense = L * layer_params + cfg.vocab_size * h
    t = batch * q_len
    kv_read = batch * context * L * 2 * cfg.kv_size * elt
    nbytes = dense * elt + kv_read
    if mask.kind.value == "causal":
        pairs = q_len * context + q_len * (q_len + 1) // 2
    elif mask.kind.value == "bidirectional":
        pairs = q_len * context + q_len * q_len
    else:
        r, b = mask.rows(q_len), mask.block
        pairs = q_len * context + (b + 1) * r * (r + 1) // 2 + r * b * b
    flops = 2 * dense * t + L * batch * 4 * pairs * cfg.q_size
    return max(nbytes / (bw_gbs * 1e9), flops / (tflops * 1e12)) * 1e3


def _ints(s: str) -> list[int]:
    return [int(x) for x in s.split(",") if x]


def time_batch_size(model, cfg, b, queries, args, dtype, dev, graphs, check, bw, rate) -> list:
    """Table rows for one batch size (its cache and graphs are freed on return)."""
    cuda = dev.type == "cuda"
    elt = torch.finfo(dtype).bits // 8
    cache = new_cache(cfg, b, args.context, max(queries), args.page_size, dtype, dev)
    rows, f1 = [], None
    for q in queries:
        mask, label = mask_for(q, cfg.block_size)
        batch = make_batch(cache, b, q, args.context, mask, dev)
        try:
            t0 = time.perf_counter()
            if args.attention == "triton":
                attn = attention_for_forward(batch, cache, cfg.num_attention_heads, cfg.head_dim)
            else:
                attn = ATTENTION_IMPLS[args.attention]
            meta_ms = (time.perf_counter() - t0) * 1e3

            def fn():
                return forward(model, batch, cache, attn)

            eager = time_eager(fn, args.reps, cuda)
            graph = float("nan")
            if graphs:
                try:
                    graph = time_graph(fn, args.reps)
                except Exception as e:          # report, keep the eager figure
                    print(f"  CUDA graph failed at batch {b}, q {q}: {type(e).__name__}: {e}")
        except torch.cuda.OutOfMemoryError:
            print(f"  out of memory at batch {b}, q {q}; skipped")
            torch.cuda.empty_cache()
            continue
        best = graph if graph == graph else eager
        f1 = best if q == 1 else f1
        floor = roofline(cfg, b, q, args.context, mask, elt, bw, rate) if cuda else float("nan")
        row = [b, q, label, b * q, eager, graph, meta_ms, b * q / (best * 1e-3), floor,
               best / floor, best / f1 if f1 else float("nan")]
        if check:
            ref = forward(model, batch, cache, ATTENTION_IMPLS["reference"])
            row.append(float((fn() == ref).double().mean()))
        rows.append(row)
        if cuda:
            torch.cuda.empty_cache()
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--smoke", action="store_true", help="tiny preset under the Triton interpreter")
    ap.add_argument("--preset", default="8b")
    ap.add_argument("--batches", default="1,4,16,64")
    ap.add_argument("--queries", default="1,32,1056")
    ap.add_argument("--context", type=int, default=2048)
    ap.add_argument("--page-size", type=int, default=16)
    ap.add_argument("--attention", default="triton", choices=sorted(ATTENTION_IMPLS))
    ap.add_argument("--reps", type=int, default=10)
    ap.add_argument("--no-graphs", action="store_true", help="eager timings only")
    ap.add_argument("--check", action="store_true",
                    help="also run core's reference attention and report the share of equal "
                         "argmax ids (always on with --smoke)")
    ap.add_argument("--markdown", action="store_true")
    args = ap.parse_args(argv)
    cuda = torch.cuda.is_available()
    if args.smoke:
        args.preset, args.context, args.reps = "tiny", 9, 1
        if "--batches" not in " ".join(sys.argv):
            args.batches = "1,2"
        if "--queries" not in " ".join(sys.argv):
            args.queries = "1,4,20"
    cfg = preset(args.preset)
    block = cfg.block_size
    dtype = torch.bfloat16 if cuda else torch.float32
    batches, queries = _ints(args.batches), _ints(args.queries)
    if not cuda and not args.smoke:
        print("benchmarks/forward_cost.py: no CUDA device here, nothing timed.")
        print(f"On a GPU it would time preset {args.preset!r} ({cfg.num_hidden_layers} layers, "
              f"hidden {cfg.hidden_size}, heads {cfg.num_attention_heads}/"
              f"{cfg.num_key_value_heads}, head_dim {cfg.head_dim}, vocab {cfg.vocab_size}), bf16 "
              f"random weights, context {args.context}, page size {args.page_size}, attention "
              f"{args.attention}, at batches {batches} × query tokens "
              f"{[f'{q} ({mask_for(q, block)[1]})' for q in queries]}.")
        print("Run it on a CUDA machine, or with --smoke for a tiny interpreter check.")
        return 0
    dev = torch.device("cuda" if cuda else "cpu")
    graphs = cuda and not args.no_graphs
    print(f"# forward cost\ncommand: {shlex.join([sys.executable] + sys.argv)}")
    print(f"hardware: {hardware()}")
    print(f"model: preset {args.preset} ({cfg.num_parameters / 1e9:.2f} B params), {dtype}, random "
          f"weights; context {args.context} per request, page size {args.page_size}, attention "
          f"{args.attention}, block {block}")
    bw, rate = (copy_bandwidth(), matmul_rate(dtype)) if cuda else (float("nan"), float("nan"))
    if cuda:
        print(f"measured: copy bandwidth {bw:.0f} GB/s, bf16 matmul {rate:.0f} TFLOP/s (8192³)")
    else:
        print("SMOKE: interpreter timings are meaningless; this checks the script end to end.")
    model = build_model(cfg, dtype, dev)
    check = args.check or args.smoke
    cols = ["batch", "q/req", "pass", "tokens", "eager ms", "graph ms", "meta ms", "tok/s",
            "floor ms", "F/floor", "F(q)/F(1)"] + (["= ref"] if check else [])
    table = []
    for b in batches:
        table += time_batch_size(model, cfg, b, queries, args, dtype, dev, graphs, check, bw, rate)
        if cuda:
            torch.cuda.empty_cache()
    print_table(cols, table, args.markdown)
    print("F/floor: forward (graph if captured, else eager) / roofline floor max(bytes / copy "
          "bandwidth, FLOPs / matmul rate); bytes = weights (no embedding) + KV read. "
          "Targets (DESIGN §6): batch 1 F(32)/F(1) <= 1.10; quadratic within 15% of its compute "
          "floor; AR forward >= 90% of copy bandwidth (F/floor <= 1.11).")
    return 0


if __name__ == "__main__":
    sys.exit(main())
