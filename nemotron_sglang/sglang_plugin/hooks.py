"""The two SGLang hooks the plugin needs, and nothing else.

- AROUND ``DllmConfig.from_server_args``: SGLang hard-codes block size and mask id per dLLM
  architecture; for an NLD checkpoint this builds the ``DllmConfig`` from the checkpoint's own
  config (block size, mask id; YAML ``block_size`` may lower it), turns FDFO off (our rounds
  commit a variable number of tokens) and passes the model path on to the algorithm.
- AROUND ``TpModelWorker._forward_batch_generation_dllm``: hands the batch's ``Req`` objects to
  the algorithm's ``run`` (``forward_batch.nld_reqs``), where per-request modes, seeds and
  counters live.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

from ..core.config import NLDConfig
from .model import ARCHITECTURE

DLLM_CONFIG_TARGET = "sglang.srt.dllm.config.DllmConfig.from_server_args"
TP_WORKER_TARGET = "sglang.srt.managers.tp_worker.TpModelWorker._forward_batch_generation_dllm"
ALGORITHM_NAME = "NemotronTriMode"
DEFAULT_MAX_RUNNING_REQUESTS = 16


@functools.lru_cache(maxsize=16)
def _nld_config(model_path: str) -> NLDConfig | None:
    """Core's config if ``model_path`` is a local NLD checkpoint, else None."""
    cfg_file = Path(model_path) / "config.json"
    if not cfg_file.is_file():
        return None
    try:
        archs = json.loads(cfg_file.read_text()).get("architectures") or []
    except (OSError, ValueError):
        return None
    if ARCHITECTURE not in archs[:1]:
        return None
    return NLDConfig.from_pretrained(model_path)


@functools.lru_cache(maxsize=16)
def _yaml(path: str | None) -> dict:
    if path is None:
        return {}
    import yaml

    with open(path) as f:
        data = yaml.safe_load(f) or {}
    if not isinstance(data, dict):
        raise ValueError(f"{path}: the dLLM algorithm config must be a YAML mapping")
    return data


def dllm_config_from_server_args(original, server_args):
    from sglang.srt.arg_groups.overrides import resolving_view
    from sglang.srt.dllm.config import DllmConfig

    cfg = resolving_view(server_args)
    if cfg.dllm_algorithm is None:
        return original(server_args)
    nld = _nld_config(str(cfg.model_path))
    if nld is None:
        return original(server_args)
    if cfg.dllm_algorithm != ALGORITHM_NAME:
        raise ValueError(f"NLD checkpoints are served with --dllm-algorithm {ALGORITHM_NAME}, "
                         f"not {cfg.dllm_algorithm!r}")
    algorithm_config = dict(_yaml(cfg.dllm_algorithm_config))
    block = algorithm_config.get("block_size", nld.block_size)
    if isinstance(block, bool) or not isinstance(block, int) or block < 1 or \
            block & (block - 1) or block > nld.block_size:
        raise ValueError(f"block_size {block!r} must be a power of two <= the checkpoint's "
                         f"block_size {nld.block_size}")
    algorithm_config["model_path"] = str(cfg.model_path)
    return DllmConfig(
        algorithm=ALGORITHM_NAME, algorithm_config=algorithm_config, block_size=block,
        mask_id=nld.mask_token_id,
        max_running_requests=cfg.max_running_requests or DEFAULT_MAX_RUNNING_REQUESTS,
        first_done_first_out_mode=False, requires_separate_context_encoding=True)


def attach_requests(original, self, forward_batch, batch=None, *args, **kwargs):
    if batch is not None:
        forward_batch.nld_reqs = batch.reqs
    return original(self, forward_batch, batch, *args, **kwargs)
