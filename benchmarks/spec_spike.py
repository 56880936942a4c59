"""The spike of issue 14: how far SGLang 0.5.23's speculative-decoding framework runs on this CPU.

    python benchmarks/spec_spike.py --markdown

NLD self-speculation could be hosted on SGLang's speculative framework instead of its dLLM
lifecycle (docs/structure.md, "Host of the round"). This script finds out, with unmodified SGLang
serving the trained fixture as a plain Ministral3 (``testing.mistral3``), which built-in
algorithms start and serve a request on the CPU, what each needs, and what one speculative cycle
costs in forwards. Nothing here is product code: the plugin's CPU platform is opted in to
speculative algorithms only inside the spike's servers, through a ``sitecustomize`` written to a
temporary folder, with the shims each candidate needs:

- ``opt-in``: ``supports_speculative_algorithm`` / ``supports_speculative_draft_attention_backend``
  return True (an out-of-tree platform must declare them; ours declares nothing);
- ``cache-locs``: the platform's ``get_speculative_cache_locs_fn``, a torch gather of each
  request's ``req_to_token`` slots (SGLang has none for an out-of-tree CPU platform);
- ``record_stream``: ``Tensor.record_stream`` a no-op on CPU tensors (DFlash's worker calls it
  unconditionally; a CPU tensor raises);
- the ``forward counter``: every ``ModelRunner.forward`` counted by model class and forward mode,
  written to a JSON file (this is how forwards per cycle are measured).

Candidates: NGRAM, STANDALONE (top-k 1: a chain, the same model as drafter), UNO (a drafting LoRA
on the target, the closest to NLD's self-speculation) and DFLASH (block-diffusion drafter, causal
verify: NLD's linear_spec with a separate draft model). DFLASH gets a 1-layer draft config with
``--speculative-draft-load-format dummy`` (random weights: acceptance ~0; this measures plumbing,
not speed). Every server runs bf16 (with ``--dtype float32`` the DFlash draft's first linear
layer gets a bf16 input and fails), the Triton attention backend under ``TRITON_INTERPRET=1``
(torch_native is no speculative draft backend) and overlap off, except in one DFLASH run (with
the ``record_stream`` shim the overlap loop runs too). So the timings are the Triton
interpreter's and are not reported; the table reports what ran, the tokens against greedy AR on
the same flags, and forwards per cycle. Results: benchmarks/RESULTS.md (2026-12-05, the spike).
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
from nemotron_sglang.data import EMBEDDED as FIXTURE  # noqa: E402
from nemotron_sglang.testing.bench import hardware, print_table  # noqa: E402
from nemotron_sglang.testing.cpu_server import CPUServer  # noqa: E402
from nemotron_sglang.testing.mistral3 import write_ministral3_copy  # noqa: E402

SITECUSTOMIZE = '''
"""Spike shims (benchmarks/spec_spike.py), applied once the module they patch is imported."""
import importlib.abc, importlib.machinery, json, os, sys

def _cache_locs(*, req_pool_indices, req_to_token, start_offset, end_offset, batch_size,
                draft_token_num, device):
    import torch
    rows = [req_to_token[r, s:e] for r, s, e in zip(req_pool_indices.tolist(),
            start_offset.tolist(), end_offset.tolist())]
    return torch.cat(rows).long() if rows else torch.empty(0, dtype=torch.long, device=device)

def _platform(module):
    cls = module.NemotronCpuPlatform
    cls.supports_speculative_algorithm = lambda self, *a: True
    cls.supports_speculative_draft_attention_backend = lambda self, *a: True
    cls.get_speculative_cache_locs_fn = lambda self: _cache_locs
    import torch
    original = torch.Tensor.record_stream
    torch.Tensor.record_stream = lambda t, s: None if t.device.type == "cpu" else original(t, s)

COUNTS = {}

def _runner(module):
    cls = module.ModelRunner
    original = cls.forward
    def forward(self, forward_batch, *args, **kwargs):
        key = f"{type(self.model).__name__}:{forward_batch.forward_mode.name}"
        COUNTS[key] = COUNTS.get(key, 0) + 1
        with open(os.environ["SPIKE_COUNTS"], "w") as f:
            json.dump(COUNTS, f)
        return original(self, forward_batch, *args, **kwargs)
    cls.forward = forward

PATCHES = {"nemotron_sglang.sglang_plugin.cpu_platform": _platform,
           "sglang.srt.model_executor.model_runner": _runner}

class _After(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name not in PATCHES:
            return None
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        run = spec.loader.exec_module
        def exec_module(module):
            run(module)
            PATCHES[name](module)
        spec.loader.exec_module = exec_module
        return spec

sys.meta_path.insert(0, _After())
'''

# A one-layer DFlash draft over the fixture's geometry (its attention kernels want a power-of-two
# head_dim, so 64 where the target has 48); random weights (--speculative-draft-load-format dummy).
DFLASH_CONFIG = {
    "architectures": ["DFlashDraftModel"], "model_type": "qwen3", "hidden_size": 192,
    "num_hidden_layers": 1, "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 64,
    "intermediate_size": 512, "vocab_size": 640, "rms_norm_eps": 1e-5, "rope_theta": 10000.0,
    "max_position_embeddings": 4096, "hidden_act": "silu", "attention_bias": False,
    "tie_word_embeddings": False, "torch_dtype": "bfloat16", "bos_token_id": 1, "eos_token_id": 11,
    "dflash_config": {"block_size": 8, "target_layer_ids": [1, 2], "mask_token_id": 100},
}

COMMON = ["--dtype", "bfloat16", "--attention-backend", "triton",
          "--max-total-tokens", "4096", "--max-running-requests", "8"]
SYNC = ["--disable-overlap-schedule"]
AR = "AR (no speculation)"                # the reference every candidate's tokens are checked against
TARGET = "Ministral3ForCausalLM"         # the target's model class in the forward counts


def candidates(tmp: Path, plain: Path) -> dict[str, list[str]]:
    draft = tmp / "dflash-draft"
    draft.mkdir(exist_ok=True)
    (draft / "config.json").write_text(json.dumps(DFLASH_CONFIG))
    dflash = ["--speculative-algorithm", "DFLASH", "--speculative-draft-model-path", str(draft),
              "--speculative-draft-load-format", "dummy",
              "--speculative-draft-attention-backend", "triton"]
    return {
        AR: SYNC,
        "NGRAM": [*SYNC, "--speculative-algorithm", "NGRAM"],
        "STANDALONE, top-k 1": [*SYNC, "--speculative-algorithm", "STANDALONE",
                                "--speculative-draft-model-path", str(plain),
                                "--speculative-eagle-topk", "1", "--speculative-num-steps", "3",
                                "--speculative-num-draft-tokens", "4",
                                "--speculative-draft-attention-backend", "triton"],
        "UNO": [*SYNC, "--speculative-algorithm", "UNO", "--uno-lora-path",
                str(FIXTURE / "linear_spec_lora")],
        "DFLASH, block 8": [*SYNC, *dflash],
        "DFLASH, block 8, overlap on": dflash,
    }


def failure(log: Path) -> str:
    """The last exception line of a server log, shortened."""
    lines = [ln.strip() for ln in log.read_text(errors="replace").splitlines()]
    errs = [ln for ln in lines if ln.split(":")[0].endswith(("Error", "Exception"))]
    return (errs[-1] if errs else lines[-1] if lines else "no output")[:160]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--prompts", type=int, default=4)
    p.add_argument("--max-new-tokens", type=int, default=24)
    p.add_argument("--port", type=int, default=30231)
    p.add_argument("--markdown", action="store_true")
    a = p.parse_args()

    from nemotron_sglang.testing.corpus import corpus_prompts
    from nemotron_sglang.core.tokenizer import load_tokenizer

    prompts, _ = corpus_prompts(load_tokenizer(FIXTURE), a.prompts, 1_000_000)
    tmp = Path(tempfile.mkdtemp(prefix="spec_spike-"))
    (tmp / "sitecustomize.py").write_text(SITECUSTOMIZE)
    plain = write_ministral3_copy(FIXTURE, tmp / "ministral3")
    body = {"input_ids": prompts,
            "sampling_params": {"max_new_tokens": a.max_new_tokens, "temperature": 0}}
    rows, reference = [], None
    for name, extra in candidates(tmp, plain).items():
        counts = tmp / f"{name[:5]}-counts.json"
        env = {"SGLANG_PLUGINS": "nemotron_cpu", "PYTHONPATH": str(tmp), "TRITON_INTERPRET": "1",
               "SPIKE_COUNTS": str(counts)}
        log = tmp / f"{name[:5]}.log"
        try:
            server = CPUServer(plain, log, [*COMMON, *extra], env=env, port=a.port)
        except RuntimeError:
            rows.append([name, "no", "-", "-", "-", "-", failure(log)])
            continue
        try:
            counts.unlink(missing_ok=True)                 # count the measured requests only
            code, text = server.post("/generate", body, 1800)
        finally:
            server.stop()
        if code != 200:
            rows.append([name, "yes", "no", "-", "-", "-", failure(log)])
            continue
        out = json.loads(text)
        ids = [o["output_ids"] for o in out]
        if name == AR:
            reference = ids
        tokens = sum(len(i) for i in ids)
        cycles = sum(o["meta_info"].get("spec_verify_ct", 0) for o in out)
        fwd = json.loads(counts.read_text()) if counts.exists() else {}
        # A batched cycle is one verify forward of the target; every forward but the target's
        # prefill (EXTEND) belongs to some cycle.
        verifies = fwd.get(f"{TARGET}:TARGET_VERIFY", 0)
        per_cycle = (f"{(sum(fwd.values()) - fwd.get(f'{TARGET}:EXTEND', 0)) / verifies:.2f}"
                     if verifies else "-")
        same = "reference" if name == AR else ids == reference    # False if AR did not serve
        rows.append([name, "yes", "yes", same,
                     f"{tokens / cycles:.2f}" if cycles else "-", per_cycle,
                     "; ".join(f"{k} {v}" for k, v in sorted(fwd.items()))])
    print(f"# hardware: {hardware(triton_interpret=True)}")
    print(f"# command: python {shlex.join(sys.argv)}")
    print(f"# {a.prompts} held-out corpus prompts in one /generate, {a.max_new_tokens} tokens, "
          f"greedy; flags: {' '.join(COMMON)} (+ {SYNC[0]} unless 'overlap on'); "
          "TRITON_INTERPRET=1; shims in the module docstring")
    print(f"# server logs (the failures' tracebacks): {tmp}")
    print_table(["candidate", "starts", "serves", "tokens = AR", "tokens / request cycle",
                 "forwards / batched cycle", "forwards (model:mode) or failure"], rows, a.markdown)


if __name__ == "__main__":
    main()
