"""The fused quadratic_spec pass's cost split — attention / linear layers / head — before and after
the lean pass (issue 14 item 3), on core's PyTorch layers with random weights.

    before  R = B rows (every draft), dense QUADRATIC mask over P + R·(B+1) keys per query,
            head over all R·(B+1) rows
    after   R = row_budget(ā) rows, structured attention (P + R + B + 1 keys per query,
            ``core.attention.quadratic_attention``), head over the R + B - 1 rows read

Per layer it times the attention call alone (on the layer's real q, k, v), the rest of the
layer (norms, RoPE, q/k/v/o projections, MLP: "linear"), and the head over the rows; the
"full depth" column multiplies the per-layer figures by the preset's layer count (a labelled
extrapolation when ``--layers`` runs fewer). Prints the hardware and settings.

    python benchmarks/quadratic_pass.py                          # 8B shapes, 1 layer, fp32
    python benchmarks/quadratic_pass.py --preset 3b --accepted 6 --markdown
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time

import torch

from nemotron_sglang.testing.bench import hardware, print_table

from nemotron_sglang.core.attention import (quadratic_attention,
                                            quadratic_attention_dense)
from nemotron_sglang.core.config import preset
from nemotron_sglang.core.decoding.quadratic_spec import row_budget
from nemotron_sglang.core.model import NLDModel


def median_ms(fn, reps: int) -> float:
    fn()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2] * 1e3


@torch.no_grad()
def split(model, rows: int, block: int, context: int, attention, head_rows: int, reps: int,
          device) -> dict[str, float]:
    """Per-layer attention / linear ms and head ms for one pass of ``rows`` quadratic rows."""
    cfg = model.config
    layer = model.encoder.layers[0]
    attn = layer.self_attn
    n = rows * (block + 1)
    g = torch.Generator(device="cpu").manual_seed(5)
    dt = model.dtype
    x = torch.randn(n, cfg.hidden_size, generator=g).to(device, dt)
    pos = torch.arange(context, context + n, device=device)
    prefix_k = torch.randn(context, cfg.num_key_value_heads, cfg.head_dim, generator=g).to(device, dt)
    prefix_v = torch.randn_like(prefix_k)
    h = layer.input_layernorm(x)
    q = attn.q_proj(h).view(n, cfg.num_attention_heads, cfg.head_dim)
    k = attn.k_proj(h).view(n, cfg.num_key_value_heads, cfg.head_dim)
    v = attn.v_proj(h).view(n, cfg.num_key_value_heads, cfg.head_dim)
    q, k = model.rotary.apply(q, k, pos)
    keys, values = torch.cat([prefix_k, k]), torch.cat([prefix_v, v])
    scale = attn.scale
    t_attn = median_ms(lambda: attention(q, keys, values, context, block, scale), reps)

    def linear():
        hh = layer.input_layernorm(x)
        qq = attn.q_proj(hh).view(n, cfg.num_attention_heads, cfg.head_dim)
        kk = attn.k_proj(hh).view(n, cfg.num_key_value_heads, cfg.head_dim)
        attn.v_proj(hh)
        qq, kk = model.rotary.apply(qq, kk, pos)
        y = x + attn.o_proj(qq.reshape(n, cfg.q_size))
        return y + layer.mlp(layer.post_attention_layernorm(y))
    t_linear = median_ms(linear, reps)
    final = model.encoder.norm(x[:head_rows])
    t_head = median_ms(lambda: model.diffusion_head(final), reps)
    return {"attention": t_attn, "linear": t_linear, "head": t_head}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--preset", default="8b")
    ap.add_argument("--layers", type=int, default=1, help="layers actually built (time per layer)")
    ap.add_argument("--block", type=int, default=32)
    ap.add_argument("--context", type=int, default=512, help="committed tokens per request")
    ap.add_argument("--accepted", type=float, default=13.0,
                    help="mean accepted drafts per cycle ā for the row budget (fixture: ~13)")
    ap.add_argument("--dtype", default="bfloat16" if torch.cuda.is_available() else "float32")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--markdown", action="store_true")
    args = ap.parse_args()

    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = getattr(torch, args.dtype)
    full = preset(args.preset)
    cfg = full.replace(num_hidden_layers=args.layers, block_size=args.block)
    torch.manual_seed(0)
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            model = NLDModel(cfg).eval()
    finally:
        torch.set_default_dtype(old)
    model.rotary.inv_freq = model.rotary.inv_freq.to(device)
    b = args.block
    r_after = row_budget(args.accepted, b - 1)
    variants = [("before", b, quadratic_attention_dense, b * (b + 1)),
                ("after", r_after, quadratic_attention, r_after + b - 1)]
    depth = full.num_hidden_layers
    print(f"# {hardware(triton_interpret=False)}")
    print(f"# preset {args.preset} (built {args.layers} of its {depth} layers, layer 0 timed), "
          f"{args.dtype}, B={b}, "
          f"context {args.context}, ā={args.accepted} -> R_after={r_after}; "
          f"command: python benchmarks/quadratic_pass.py {shlex.join(sys.argv[1:])}")
    rows, totals = [], {}
    for name, r, attention, head_rows in variants:
        s = split(model, r, b, args.context, attention, head_rows, args.reps, device)
        total = depth * (s["attention"] + s["linear"]) + s["head"]
        totals[name] = total
        rows.append([name, r, r * (b + 1), head_rows, s["attention"], s["linear"], s["head"],
                     depth * s["attention"], depth * s["linear"], s["head"], total])
    print_table(["pass", "rows R", "tokens", "head rows", "attn ms/layer", "linear ms/layer",
                 "head ms", f"attn ms x{depth}", f"linear ms x{depth}", "head ms (1x)",
                 f"total ms (x{depth} layers)"], rows, args.markdown)
    print(f"# after / before, full depth: {totals['after'] / totals['before']:.3f}")


if __name__ == "__main__":
    main()
