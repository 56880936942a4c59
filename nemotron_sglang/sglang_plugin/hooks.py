"""The SGLang hooks the round needs, and nothing else.

- AROUND ``DllmConfig.from_server_args``: SGLang hard-codes block size and mask id per dLLM
  architecture; for an NLD checkpoint this builds the ``DllmConfig`` from the checkpoint's own
  config (block size, mask id; YAML ``block_size`` may lower it), turns FDFO off (our rounds
  commit a variable number of tokens) and passes the model path on to the algorithm. Without
  ``--max-running-requests`` its cap is SGLang's own 1 (``UNSET_CAP``) until the scheduler
  derives it (next item).
- AROUND ``SchedulerDllmMixin.init_diffusion_llm`` (after SGLang sized its pools): the running
  cap from the device's memory, core's rule (``core/limits.py``: min(request slots, KV pool //
  (block + 1)); the flag wins within the slots), set on the ``DllmConfig`` and the
  ``DllmManager`` and logged with its derivation, plus where ``auto``'s switch point comes from
  (``auto_plan.switch_point_note``).
- AROUND ``TpModelWorker._forward_batch_generation_dllm``: hands the batch's ``Req`` objects to
  the algorithm's ``run`` (``forward_batch.nld_reqs``), where per-request modes, seeds and
  counters live.
- AROUND ``SchedulerDllmMixin._stash_dllm_context``: after a canvas round SGLang frees the whole
  canvas and would re-encode the committed tokens in a context round. The round's tokens already
  have their KV in the canvas slots (the verify, AR, refresh or quadratic pass wrote it), so this
  keeps exactly those ``req.nld.keep`` slots as committed KV and frees the rest; the next round
  is a canvas round again. With nothing to keep it is SGLang's own code.

    canvas slots after a linear_spec round (c = 2 drafts accepted, B = 8):
        [ s  d1 d2 | x  x  x  x  x ]      kept: 3 (s, d1, d2), freed: 5; bonus held as next seed
- the scheduling hooks (retraction under KV pressure, aborts of parked requests) live in
  ``retraction.py``.
"""

from __future__ import annotations

import functools
import logging

from ..core.config import NLDConfig
from ..core.limits import running_request_cap
from ..core.vlm_checkpoint import text_config_of
from ..core.modes import ALGORITHM_NAME, RuleError, check_block_length
from .canvas_round import RESEED

logger = logging.getLogger(__name__)

DLLM_CONFIG_TARGET = "sglang.srt.dllm.config.DllmConfig.from_server_args"
TP_WORKER_TARGET = "sglang.srt.managers.tp_worker.TpModelWorker._forward_batch_generation_dllm"
STASH_TARGET = "sglang.srt.dllm.mixin.scheduler.SchedulerDllmMixin._stash_dllm_context"
INIT_TARGET = "sglang.srt.dllm.mixin.scheduler.SchedulerDllmMixin.init_diffusion_llm"
# SGLang methods the hooks call (checked at registration, like the targets)
CALLED = ("sglang.srt.runtime_context.get_parallel",)
# the DllmConfig's cap without --max-running-requests until the scheduler derives it
# (cap_running_requests): SGLang's own dLLM default, which no round outside the scheduler reads
UNSET_CAP = 1


@functools.lru_cache(maxsize=16)
def _nld_config(model_path: str) -> NLDConfig | None:
    """Core's (text) config if ``model_path`` is a local NLD checkpoint (text or VLM), else
    None."""
    return text_config_of(model_path)


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

    from .server_config import TriModeConfig

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
    try:
        check_block_length(block, nld.block_size, of="the checkpoint's block_size",
                           field="block_size")
    except RuleError as e:
        raise ValueError(f"algorithm config {e}") from None
    algorithm_config["model_path"] = str(cfg.model_path)
    return TriModeConfig(
        algorithm=ALGORITHM_NAME, algorithm_config=algorithm_config, block_size=block,
        mask_id=nld.mask_token_id,
        max_running_requests=cfg.max_running_requests or UNSET_CAP,
        first_done_first_out_mode=False, requires_separate_context_encoding=True)


def cap_running_requests(original, self):
    """SGLang's ``init_diffusion_llm``; then, on an NLD server, the running-request cap from the
    pools SGLang sized (``init_model_worker`` ran first) by core's rule, logged once."""
    original(self)
    from sglang.srt.arg_groups.overrides import resolving_view
    from sglang.srt.runtime_context import get_parallel

    from .auto_plan import switch_point_note
    from .server_config import TriModeConfig

    config = self.dllm_config
    if not isinstance(config, TriModeConfig):
        return
    slots = min(self.max_running_requests, self.req_to_token_pool.size)
    cap, why = running_request_cap(self.max_total_num_tokens, slots, config.block_size,
                                   resolving_view(self.server_args).max_running_requests)
    config.max_running_requests = self.dllm_manager.max_running_reqs = cap
    if get_parallel().tp_rank != 0:
        return
    logger.info("NemotronTriMode: %s", why)
    level, note = switch_point_note(config.settings.cost_table(),
                                    config.settings.auto_max_batch, str(self.device))
    logger.log(level, "NemotronTriMode: %s", note)


def attach_requests(original, self, forward_batch, batch=None, *args, **kwargs):
    if batch is not None:
        forward_batch.nld_reqs = batch.reqs
    return original(self, forward_batch, batch, *args, **kwargs)


def keep_canvas_kv(original, self, req):
    """SGLang's ``_stash_dllm_context`` with the round's written KV kept (see the docstring).
    ``keep == RESEED`` drops the last committed token's KV instead, so that the next round
    re-encodes it (a context pass) and the request's core state starts afresh."""
    nld = getattr(req, "nld", None)
    keep = nld.keep if nld is not None else 0
    if keep == 0:
        return original(self, req)
    nld.keep = 0
    context_len = req.dllm_block_offset
    block_size = self.dllm_config.block_size
    if req.extend_end != context_len + block_size or req.kv is None or \
            req.kv.req_pool_idx is None:
        raise RuntimeError(f"request {req.rid}: canvas of {req.extend_end - context_len} slots "
                           f"at {context_len}, expected {block_size}")
    committed = context_len - 1 if keep == RESEED else context_len + keep
    if keep != RESEED and (keep > block_size or
                           committed != len(req.origin_input_ids) + len(req.output_ids)):
        raise RuntimeError(f"request {req.rid}: keeping {keep} canvas slots disagrees with "
                           f"{len(req.output_ids)} committed output tokens")
    allocated = req.kv.kv_allocated_len
    page_size = self.token_to_kv_pool_allocator.page_size
    free_start = -(-committed // page_size) * page_size
    if free_start < allocated:
        slots = self.req_to_token_pool.req_to_token[req.kv.req_pool_idx, free_start:allocated]
        self.token_to_kv_pool_allocator.free_segment(slots, start_pos=free_start)
    req.kv.kv_committed_len = committed
    req.kv.kv_allocated_len = committed
    if req.kv.max_evicted_seqlen > committed:
        raise RuntimeError(f"request {req.rid}: evicted KV beyond the committed length")
    req.extend_end = committed
    # the round's tokens were written at the canvas tail: rebuild prompt + output
    req.full_untruncated_fill_ids = req.full_untruncated_fill_ids[:min(context_len, committed)]
    req.refresh_fill_ids()
    self.stash_chunked_request(req)
