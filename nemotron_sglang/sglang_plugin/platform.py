"""Opt-in out-of-tree SGLang platform for CPU-only machines (entry point ``sglang.srt.platforms``).

SGLang 0.5.23's own CPU route needs a CPU build of ``sgl_kernel`` that no registry ships; without
a CPU platform, model construction reaches a CUDA-only rotary import. This platform reuses SGLang's
``CpuSRTPlatform`` marked out-of-tree, so fused layers fall back to their native PyTorch paths.
It activates only when ``NEMOTRON_SGLANG_CPU_PLATFORM=1`` and no CUDA device is visible, so it
never takes over a GPU host (``nemotron-sglang serve`` sets the variable on CPU machines).

One gap of SGLang's CPU path is filled while it is active (``CPU_HOOKS``): the xgrammar
backend's own ``apply_vocab_mask``, which SGLang's reasoning wrapper (``--enable-strict-thinking``,
the thinking budget) uses when it wraps no grammar, raises "Unsupported device: cpu" although
xgrammar has a CPU kernel (the grammar object's method already uses it). Without this the plain
AR server crashes on a thinking budget; the dLLM path never calls it (core applies masks).
"""

from __future__ import annotations

import os

ENV = "NEMOTRON_SGLANG_CPU_PLATFORM"


def _cuda_visible() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except Exception:  # noqa: BLE001 - torch missing or broken: certainly no CUDA platform
        return False


def activate() -> str | None:
    """SGLang's platform hook: the platform class path when opted in on a CPU-only host."""
    if os.environ.get(ENV, "0") != "1" or _cuda_visible():
        return None
    return "nemotron_sglang.sglang_plugin.cpu_platform.NemotronCpuPlatform"


XGRAMMAR_BACKEND_MASK = ("sglang.srt.constrained.xgrammar_backend.XGrammarGrammarBackend."
                         "apply_vocab_mask")


def apply_vocab_mask_on_cpu(original, *args, **kwargs):
    """AROUND ``XGrammarGrammarBackend.apply_vocab_mask(logits, vocab_mask)``: xgrammar's CPU
    kernel for CPU logits, SGLang's own code otherwise."""
    names = ("logits", "vocab_mask")
    bound = dict(zip(names, args), **kwargs)
    if bound["logits"].device.type != "cpu":
        return original(*args, **kwargs)
    from xgrammar import apply_token_bitmask_inplace

    apply_token_bitmask_inplace(bound["logits"], bound["vocab_mask"], backend="cpu")
    return None


CPU_HOOKS = ((XGRAMMAR_BACKEND_MASK, apply_vocab_mask_on_cpu),)

