"""Opt-in out-of-tree SGLang platform for CPU-only machines (entry point ``sglang.srt.platforms``).

SGLang 0.5.23's own CPU route needs a CPU build of ``sgl_kernel`` that no registry ships; without
a CPU platform, model construction reaches a CUDA-only rotary import. This platform reuses SGLang's
``CpuSRTPlatform`` marked out-of-tree, so fused layers fall back to their native PyTorch paths.
It activates only when ``NEMOTRON_SGLANG_CPU_PLATFORM=1`` and no CUDA device is visible, so it
never takes over a GPU host (``nemotron-sglang serve`` sets the variable on CPU machines).
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
