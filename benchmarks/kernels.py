"""Paged block-attention kernel benchmark: our Triton kernel vs torch flex_attention (block mask),
SDPA with an explicit mask, and FlashInfer (when importable), on the same paged work.

One command on a CUDA machine prints the hardware, dtype and shapes, the measured copy
bandwidth, and per workload: time of each method, our achieved bandwidth (bytes the kernel must
move / time) as a share of the copy bandwidth, achieved TFLOP/s over the unmasked pairs, each
method's error against core's reference, and our speed-up over flex / SDPA.

    python benchmarks/kernels.py                 # GPU: full table (bf16, 32/8 heads, d 128)
    python benchmarks/kernels.py --markdown      # same, as a markdown table for RESULTS.md
    python benchmarks/kernels.py --smoke         # CPU: tiny shapes under TRITON_INTERPRET=1

What is timed (``triton.testing.do_bench``, median, L2 flushed between reps):
* ``triton``: :func:`paged_attention_with_metadata` — reads K/V through the page table; the
  host metadata build (once per forward in a server) is reported separately as ``meta ms``;
* ``flex`` / ``sdpa``: the attention call on K/V already gathered into contiguous tensors
  (flex: one packed sequence with a document mask_mod, GQA native; sdpa: padded per-request
  batch with a boolean mask, K/V heads expanded to the query heads beforehand). The gather
  from the pages they would need is timed separately (``gather``); block-mask and dense-mask
  construction is not timed;
* ``flashinfer``: the whole :func:`paged_attention_flashinfer` call, planning included.
Without CUDA (and without ``--smoke``) it prints the plan and exits 0.
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
    os.environ["TRITON_INTERPRET"] = "1"        # before any Triton kernel is decorated

from nemotron_sglang.core.attention import (BIDIRECTIONAL, CAUSAL, MaskKind,  # noqa: E402
                                            build_mask, paged_attention, quadratic)
from nemotron_sglang.core.batch import ForwardBatch, PassRow  # noqa: E402
from nemotron_sglang.core.kv_cache import PagedKVCache  # noqa: E402
from nemotron_sglang.kernels import (build_metadata, flashinfer_available,  # noqa: E402
                                     paged_attention_flashinfer, paged_attention_with_metadata)


# ---- workloads ------------------------------------------------------------------------------

def workloads(smoke: bool, ctx: int, block: int):
    """name -> rows [(prefix_len, q_len, MaskSpec)]."""
    if smoke:
        return {"decode b3": [(40, 1, CAUSAL), (0, 1, CAUSAL), (17, 1, CAUSAL)],
                "block b2": [(40, 4, BIDIRECTIONAL), (9, 4, BIDIRECTIONAL)],
                "quadratic B4": [(40, 20, quadratic(4))]}
    q = block * (block + 1)
    w = {}
    for b in (1, 16, 64):
        w[f"decode b{b} ctx{ctx}"] = [(ctx, 1, CAUSAL)] * b
    for b in (1, 16):
        w[f"block{block} bidir b{b}"] = [(ctx, block, BIDIRECTIONAL)] * b
    w[f"verify{block} causal b16"] = [(ctx, block, CAUSAL)] * 16
    for b in (1, 4):
        w[f"quadratic B{block} ({q}) b{b}"] = [(ctx, q, quadratic(block))] * b
    w["prefill 2048 b1"] = [(0, 2048, CAUSAL)]
    w["ragged mix"] = [(ctx // 3, 1, CAUSAL), (ctx, block, BIDIRECTIONAL), (7, 1, CAUSAL),
                       (ctx * 2, 1, CAUSAL), (ctx // 2, block, BIDIRECTIONAL)]
    return w


def make_work(rows, hq, hkv, d, dtype, page_size, device, seed=0):
    g = torch.Generator(device="cpu").manual_seed(seed)
    pages = sum(-(-(p + n) // page_size) + 1 for p, n, _ in rows)
    cache = PagedKVCache(num_layers=1, num_kv_heads=hkv, head_dim=d, num_pages=pages,
                         page_size=page_size, dtype=dtype, device=device, shuffle_seed=seed)
    cache.k.normal_(generator=None)
    cache.v.normal_(generator=None)
    prs = []
    for i, (p, n, m) in enumerate(rows):
        cache.add(i)
        if p:
            cache.append(i, p)
            cache.commit(i, p)
        prs.append(PassRow(i, [0] * n, list(range(p, p + n)), p, m))
    batch = ForwardBatch.from_rows(prs, device=device)
    t = batch.num_tokens
    q = torch.randn(t, hq, d, generator=g).to(device, dtype)
    k = torch.randn(t, hkv, d, generator=g).to(device, dtype)
    v = torch.randn(t, hkv, d, generator=g).to(device, dtype)
    return q, k, v, cache, batch


def allowed_pairs(rows) -> int:
    """(query, key) pairs the masks allow: prefix + new (quadratic: W·R(R+1)/2 + R·B²)."""
    total = 0
    for p, n, m in rows:
        if m.kind == MaskKind.CAUSAL:
            new = n * (n + 1) // 2
        elif m.kind == MaskKind.BIDIRECTIONAL:
            new = n * n
        else:
            r, b = m.rows(n), m.block
            new = (b + 1) * r * (r + 1) // 2 + r * b * b
        total += n * p + new
    return total


def kernel_bytes(rows, hq, hkv, d, elt) -> int:
    t = sum(n for _, n, _ in rows)
    prefix = sum(p for p, _, _ in rows)
    return (2 * prefix * hkv * d + t * (2 * hq + 2 * hkv) * d) * elt


# ---- the competitors --------------------------------------------------------------------------

def gather_dense(cache, batch, k_new, v_new):
    """Per row [prefix + new] K/V gathered from the pages (what flex / SDPA need first)."""
    ks, vs = [], []
    for r, (s, e) in enumerate(batch.spans()):
        pk, pv = cache.gather(0, batch.seq_ids[r], batch.prefix_lens[r])
        ks.append(torch.cat([pk, k_new[s:e]]))
        vs.append(torch.cat([pv, v_new[s:e]]))
    return ks, vs


def sdpa_inputs(q, ks, vs, batch):
    """Padded batch [R, Hq, L, d] (K/V heads expanded to Hq, so the fused masked backends
    apply) and a boolean mask [R, 1, Lq, Lk] (padded query rows see key 0)."""
    r = len(ks)
    lq, lk = max(batch.q_lens), max(k.shape[0] for k in ks)
    hq, hkv, d = q.shape[1], ks[0].shape[1], q.shape[2]
    qp = q.new_zeros(r, lq, hq, d)
    kp = q.new_zeros(r, lk, hq, d)
    vp = q.new_zeros(r, lk, hq, d)
    g = hq // hkv
    mask = torch.zeros(r, 1, lq, lk, dtype=torch.bool, device=q.device)
    mask[:, :, :, 0] = True
    for i, (s, e) in enumerate(batch.spans()):
        n, kl = e - s, ks[i].shape[0]
        qp[i, :n] = q[s:e]
        kp[i, :kl] = ks[i].repeat_interleave(g, dim=1)
        vp[i, :kl] = vs[i].repeat_interleave(g, dim=1)
        mask[i, 0, :n, :kl] = build_mask(batch.masks[i], batch.prefix_lens[i], n, q.device)
    return qp.transpose(1, 2), kp.transpose(1, 2), vp.transpose(1, 2), mask


def sdpa_unpad(out, batch):
    out = out.transpose(1, 2)                      # [R, Lq, H, d]
    return torch.cat([out[i, : e - s] for i, (s, e) in enumerate(batch.spans())])


def flex_setup(q, ks, vs, batch):
    from torch.nn.attention.flex_attention import create_block_mask
    dev = q.device
    kv_row, kv_new, kv_j = [], [], []
    for i, k in enumerate(ks):
        p = batch.prefix_lens[i]
        n = k.shape[0] - p
        kv_row.append(torch.full((k.shape[0],), i))
        kv_new.append(torch.arange(k.shape[0]) >= p)
        kv_j.append(torch.cat([torch.zeros(p, dtype=torch.long), torch.arange(n)]))
    q_row = torch.cat([torch.full((n,), i) for i, n in enumerate(batch.q_lens)]).to(dev)
    q_i = torch.cat([torch.arange(n) for n in batch.q_lens]).to(dev)
    kv_row, kv_new, kv_j = (torch.cat(x).to(dev) for x in (kv_row, kv_new, kv_j))
    kind = torch.tensor([m.kind.code for m in batch.masks], device=dev)
    width = torch.tensor([m.block + 1 if m.kind == MaskKind.QUADRATIC else 1 for m in batch.masks],
                         device=dev)

    def mask_mod(b, h, qi, kvi):
        r = q_row[qi]
        i, j = q_i[qi], kv_j[kvi]
        w = width[r]
        kd = kind[r]
        quad = (((j % w) == 0) & ((j // w) <= (i // w))) | (((j // w) == (i // w)) & ((i % w) > 0))
        new_ok = (kd == MaskKind.BIDIRECTIONAL.code) | ((kd == MaskKind.CAUSAL.code) & (j <= i)) \
            | ((kd == MaskKind.QUADRATIC.code) & quad)
        return (kv_row[kvi] == r) & (~kv_new[kvi] | new_ok)

    t, total = q.shape[0], kv_row.shape[0]
    bm = create_block_mask(mask_mod, 1, None, t, total, device=dev)
    kp = torch.cat(ks).transpose(0, 1)[None]       # [1, Hkv, KV, d]
    vp = torch.cat(vs).transpose(0, 1)[None]
    return q.transpose(0, 1)[None], kp, vp, bm


# ---- running ----------------------------------------------------------------------------------

def bench(fn, smoke: bool) -> float:
    """Median milliseconds (one timed call on the interpreter)."""
    if smoke:
        t0 = time.perf_counter()
        fn()
        return (time.perf_counter() - t0) * 1e3
    import triton.testing
    return triton.testing.do_bench(fn, warmup=10, rep=50, return_mode="median")


def copy_bandwidth(device) -> float:
    """GB/s of a 1 GiB device-to-device copy (read + write counted)."""
    n = 1 << 30
    a = torch.empty(n, dtype=torch.uint8, device=device)
    b = torch.empty_like(a)
    ms = bench(lambda: b.copy_(a), smoke=False)
    return 2 * n / (ms * 1e-3) / 1e9


def rel_err(x, ref) -> float:
    return float((x.float() - ref.float()).norm() / ref.float().norm())


def run_workload(name, rows, hq, hkv, d, dtype, page_size, dev, flex, bw, smoke) -> list:
    """Time every method on one workload; returns the table row."""
    cuda = dev.type == "cuda"
    elt = torch.finfo(dtype).bits // 8
    scale = d ** -0.5
    q, k, v, cache, batch = make_work(rows, hq, hkv, d, dtype, page_size, dev)
    ref = paged_attention(q, k, v, cache, 0, batch, scale)
    t0 = time.perf_counter()
    meta = build_metadata(batch, cache, hq // hkv, d, dev)
    meta_ms = (time.perf_counter() - t0) * 1e3

    def tri():
        return paged_attention_with_metadata(q, k, v, cache.k[0], cache.v[0], meta, scale)

    errs = [rel_err(tri(), ref)]
    t_tri = bench(tri, smoke)
    ks, vs = gather_dense(cache, batch, k, v)
    t_gather = bench(lambda: gather_dense(cache, batch, k, v), smoke)
    t_flex = t_sdpa = t_fi = float("nan")
    try:
        if flex is None:
            raise RuntimeError("flex_attention is not available in this torch")
        fq, fk, fv, bm = flex_setup(q, ks, vs, batch)

        def run_flex():
            return flex(fq, fk, fv, block_mask=bm, scale=scale, enable_gqa=True)

        errs.append(rel_err(run_flex()[0].transpose(0, 1), ref))
        t_flex = bench(run_flex, smoke)
    except Exception as e:                           # report, keep going
        print(f"  flex_attention failed on {name}: {type(e).__name__}: {e}")
        errs.append(float("nan"))
    try:
        sq, sk, sv, mask = sdpa_inputs(q, ks, vs, batch)

        def sdpa():
            return torch.nn.functional.scaled_dot_product_attention(
                sq, sk, sv, attn_mask=mask, scale=scale)

        errs.append(rel_err(sdpa_unpad(sdpa(), batch), ref))
        t_sdpa = bench(sdpa, smoke)
    except Exception as e:
        print(f"  SDPA failed on {name}: {type(e).__name__}: {e}")
        errs.append(float("nan"))
    errs.append(float("nan"))
    if flashinfer_available() and cuda:
        try:
            def fi():
                return paged_attention_flashinfer(q, k, v, cache, 0, batch, scale)

            errs[-1] = rel_err(fi(), ref)
            t_fi = bench(fi, smoke)
        except Exception as e:
            print(f"  flashinfer failed on {name}: {type(e).__name__}: {e}")
    nbytes = kernel_bytes(rows, hq, hkv, d, elt)
    gbs = nbytes / (t_tri * 1e-3) / 1e9
    tflops = 4 * allowed_pairs(rows) * hq * d / (t_tri * 1e-3) / 1e12
    return [name, batch.num_tokens, t_tri, meta_ms, t_flex, t_sdpa, t_gather, t_fi, gbs,
            100 * gbs / bw, tflops, t_flex / t_tri, t_sdpa / t_tri,
            "/".join(f"{e:.1e}" for e in errs)]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--smoke", action="store_true", help="tiny shapes under the Triton interpreter")
    ap.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    ap.add_argument("--context", type=int, default=2048)
    ap.add_argument("--block", type=int, default=32)
    ap.add_argument("--page-size", type=int, default=16)
    ap.add_argument("--only", default="", help="comma-separated substrings of workload names")
    ap.add_argument("--markdown", action="store_true")
    args = ap.parse_args(argv)
    cuda = torch.cuda.is_available()
    smoke = args.smoke
    hq, hkv, d = (4, 2, 16) if smoke else (32, 8, 128)
    dtype = torch.float32 if smoke and not cuda else getattr(torch, args.dtype)
    work = workloads(smoke, args.context, args.block)
    if args.only:
        keys = args.only.split(",")
        work = {k: v for k, v in work.items() if any(s in k for s in keys)}
    if not cuda and not smoke:
        print("benchmarks/kernels.py: no CUDA device here, nothing timed.")
        print(f"On a GPU it would run, at {hq}/{hkv} heads, head_dim {d}, {args.dtype}, "
              f"page size {args.page_size}: triton vs flex_attention vs SDPA"
              f"{' vs flashinfer' if flashinfer_available() else ''} on:")
        for name, rows in work.items():
            qs, ps = [n for _, n, _ in rows], [p for p, _, _ in rows]
            print(f"  {name}: {len(rows)} request(s), {sum(qs)} query tokens, q_len "
                  f"{min(qs)}..{max(qs)}, prefix {min(ps)}..{max(ps)}")
        print("Run it on a CUDA machine, or with --smoke for a tiny interpreter check.")
        return 0
    dev = torch.device("cuda" if cuda else "cpu")
    print(f"# paged attention kernels\ncommand: {shlex.join([sys.executable] + sys.argv)}")
    print(f"hardware: {hardware()}\ndtype: {dtype}, heads {hq}/{hkv}, head_dim {d}, "
          f"page size {args.page_size}, pages shuffled")
    bw = copy_bandwidth(dev) if cuda else float("nan")
    if cuda:
        print(f"measured copy bandwidth: {bw:.0f} GB/s (1 GiB device copy, read+write)")
    if smoke:
        import warnings
        warnings.filterwarnings("ignore", message="flex_attention called without torch.compile")
        print("SMOKE: interpreter timings are meaningless; this checks the script and the errors.")
    cols = ["workload", "tokens", "triton ms", "meta ms", "flex ms", "sdpa ms", "gather ms",
            "flashinfer ms", "GB/s", "% copy", "TFLOP/s", "x flex", "x sdpa",
            "err tri/flex/sdpa/fi"]
    flex = None
    try:
        from torch.nn.attention.flex_attention import flex_attention
        flex = flex_attention
        if cuda:
            import torch._dynamo.config as dynamo_cfg
            for knob in ("cache_size_limit", "recompile_limit"):    # one compile per workload
                if hasattr(dynamo_cfg, knob):
                    setattr(dynamo_cfg, knob, 64)
            flex = torch.compile(flex_attention, dynamic=False)
    except ImportError as e:
        print(f"flex_attention unavailable: {e}")
    table = []
    for name, rows in work.items():
        table.append(run_workload(name, rows, hq, hkv, d, dtype, args.page_size, dev, flex, bw,
                                  smoke))
        if cuda:
            torch.cuda.empty_cache()
    print_table(cols, table, args.markdown)
    print("x flex / x sdpa = their time / ours (>1: ours faster); target >= 1.5 (DESIGN §6). "
          "% copy = our bytes/time vs the copy bandwidth. err = rel. error vs core's reference.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
