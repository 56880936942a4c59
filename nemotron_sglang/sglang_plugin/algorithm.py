"""``NemotronTriMode``: one SGLang dLLM algorithm that runs every request in its own decode mode.

It drives core's mode strategies (``core/decoding``) on SGLang's lifecycle with a separate
context pass (``requires_separate_context_encoding``):

- a context round is a plain causal EXTEND of the tokens committed since the last round; its
  last logit per request is that request's seed (kept on the ``Req``);
- a canvas round gives each request B fresh slots right after its committed tokens. The
  request's strategy is started from the seed and asked for passes until it has emitted tokens
  and its next pass would be a refresh (which the next context round does), or until it commits
  KV (a verify pass). Passes of one kind (causal or bidirectional, LoRA or not) share one
  forward over the whole canvas batch; rows that do not take part are ignored. Passes the canvas
  cannot hold (quadratic_spec's B·(B+1) rows; bidirectional passes of a request whose
  ``block_length`` is below B) share one ``run_custom_pass`` forward instead. Up to B emitted
  tokens per request are returned; SGLang commits them, trims at stop tokens and frees the
  canvas KV.

Per canvas round: ``ar`` 0 forwards (its token is the seed), ``diffusion`` k denoise passes,
``linear_spec`` draft + verify; each then pays one context forward for the committed tokens.
Sampling decisions run in core's float64 CPU code on the logits of each pass.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, List, Optional

import torch

from sglang.srt.arg_groups.overrides import declare_resolution
from sglang.srt.dllm.algorithm.base import DllmAlgorithm, DllmRunOutput
from sglang.srt.dllm.config import DllmConfig

from ..core.attention import MaskKind
from ..core.decoding import DecodeParams, RequestState, get_strategy
from ..core.weights import LORA_DIR, load_lora
from .model import ARCHITECTURE
from .custom_pass import RowSpec, run_custom_pass
from .params import ParamError, RequestParams, SamplingView, ServerDefaults, parse

logger = logging.getLogger(__name__)

YAML_KEYS = {"algorithm", "default_mode", "threshold", "block_size", "lora_path", "model_path",
             "auto_max_batch", "custom_attention"}
TOP_K_ALL = 1 << 30


def sampling_view(req) -> SamplingView:
    """The sampling features of an SGLang ``Req`` as plain values."""
    sp = req.sampling_params
    greedy = sp.top_k == 1 or sp.temperature < 1e-6
    grammar = next((n for n in ("json_schema", "regex", "ebnf", "structural_tag")
                    if getattr(sp, n, None) is not None), None)
    lp = getattr(req, "logprob", None)
    return SamplingView(
        temperature=0.0 if greedy else float(sp.temperature),
        top_p=float(sp.top_p), top_k_limited=not greedy and sp.top_k not in (-1, TOP_K_ALL),
        min_p=float(sp.min_p), frequency_penalty=float(sp.frequency_penalty),
        presence_penalty=float(sp.presence_penalty),
        repetition_penalty=float(sp.repetition_penalty),
        min_new_tokens=int(sp.min_new_tokens or 0), logit_bias=bool(sp.logit_bias),
        grammar=grammar,
        logprobs=bool(req.return_logprob or (lp is not None and (lp.top_logprobs_num or
                                                                 lp.token_ids_logprob))),
        custom_logit_processor=bool(getattr(req, "custom_logit_processor", None)),
        seed=getattr(sp, "sampling_seed", None))


@dataclass
class RequestStats:
    """Per-request counters kept on the ``Req`` (``req.nld_stats``)."""

    mode: str = ""
    forwards: int = 0               # context re-encodes after the prompt + canvas passes
    cycles: int = 0
    cycle_tokens: int = 0
    auto_rounds: dict = field(default_factory=dict)   # "auto": rounds run per chosen mode

    @property
    def reported_mode(self) -> str:
        """The mode as reported: ``auto(linear_spec,ar)`` names what auto chose."""
        if self.mode != "auto":
            return self.mode
        return f"auto({','.join(sorted(self.auto_rounds, key=self.auto_rounds.get, reverse=True))})"


@dataclass
class _Row:
    index: int
    req: Any
    strategy: Any
    state: RequestState
    start: int                      # committed length = first canvas position
    done: bool = False
    forwards: int = 0


class NemotronTriMode(DllmAlgorithm):
    supported_architectures = (ARCHITECTURE,)
    requires_separate_context_encoding = True
    required_attention_backend = "triton"
    supported_attention_backends = ("triton", "torch_native", "nemotron")
    defaults = ServerDefaults()       # set per process by __init__ (the scheduler's)

    @classmethod
    def configure_server_args(cls, server_args) -> None:
        # variable-length commits need the synchronous lifecycle; one context pass per prompt
        declare_resolution(server_args, cls.__name__, disable_radix_cache=True,
                           chunked_prefill_size=-1, dllm_fdfo=False)

    @classmethod
    def validate_request(cls, req) -> Optional[str]:
        try:
            parse(req.sampling_params.custom_params, sampling_view(req), cls.defaults)
        except ParamError as e:
            return f"nemotron-sglang: {e}"
        return None

    def __init__(self, config: DllmConfig):
        super().__init__(config)
        yaml = dict(config.algorithm_config or {})
        unknown = set(yaml) - YAML_KEYS
        if unknown:
            raise ValueError(f"NemotronTriMode YAML: unknown keys {sorted(unknown)}; "
                             f"known: {sorted(YAML_KEYS - {'model_path'})}")
        if self.fdfo:
            raise ValueError("NemotronTriMode needs --no-dllm-fdfo (variable-length commits)")
        defaults = ServerDefaults(default_mode=yaml.get("default_mode", "linear_spec"),
                                  threshold=float(yaml.get("threshold", 0.9)),
                                  block_size=self.block_size,
                                  auto_max_batch=int(yaml.get("auto_max_batch", 8)))
        # a bad default must fail at startup, not on the first request
        parse({}, SamplingView(), defaults)
        type(self).defaults = defaults
        self.eos_id = None
        self.lora_path = self._lora_path(yaml)
        # attention of the fused quadratic pass: the Triton kernel on CUDA, core's reference on CPU
        self.custom_attention = yaml.get("custom_attention",
                                         "triton" if torch.cuda.is_available() else "reference")
        if self.custom_attention not in ("reference", "triton"):
            raise ValueError(f"custom_attention must be reference or triton, "
                             f"got {self.custom_attention!r}")
        self._lora_ready = False

    @staticmethod
    def _lora_path(yaml: dict) -> Path | None:
        value = yaml.get("lora_path")
        if value in (False, "none", "off"):
            return None
        if value:
            p = Path(value)
            if not (p / "adapter_config.json").exists():
                raise ValueError(f"lora_path {p} has no adapter_config.json")
            return p
        model_path = yaml.get("model_path")
        if model_path and (Path(model_path) / LORA_DIR / "adapter_config.json").exists():
            return Path(model_path) / LORA_DIR
        return None

    def _ensure_ready(self, model_runner) -> None:
        """First run in this process: read the EOS id and install the drafting LoRA."""
        if self._lora_ready:
            return
        model = model_runner.model
        self.eos_id = model.nld_config.eos_token_id
        if self.lora_path is not None:
            adapter = load_lora(self.lora_path, model.nld_config)
            from sglang.srt.distributed.parallel_state import (
                get_tensor_model_parallel_rank,
                get_tensor_model_parallel_world_size)

            model.install_lora(adapter.layers, adapter.scale,
                               tp_rank=get_tensor_model_parallel_rank(),
                               tp_size=get_tensor_model_parallel_world_size())
            logger.info("NemotronTriMode: drafting LoRA from %s (rank %d, scale %.3g)",
                        self.lora_path, adapter.rank, adapter.scale)
        self._lora_ready = True

    # ---- the SGLang contract --------------------------------------------------------------
    def run(self, model_runner, forward_batch, algo_states: Optional[List[Any]] = None
            ) -> DllmRunOutput:
        reqs = getattr(forward_batch, "nld_reqs", None)
        if reqs is None:
            raise RuntimeError("NemotronTriMode: the nemotron-sglang plugin hooks are not "
                               "active in this process (is the plugin installed?)")
        self._ensure_ready(model_runner)
        model = model_runner.model
        if not forward_batch.forward_mode.is_dllm_extend():
            return self._context_round(model_runner, model, forward_batch, reqs)
        return self._canvas_round(model_runner, model, forward_batch, reqs)

    def _context_round(self, model_runner, model, forward_batch, reqs) -> DllmRunOutput:
        if forward_batch.input_ids.numel() == 0:
            return None, [], None, None, False
        model.set_causal(True)
        model.lora_active = False
        out = model_runner.forward(forward_batch, pp_proxy_tensors=None)
        logits = out.logits_output.next_token_logits
        for i, req in enumerate(reqs):
            req.nld_seed_logits = logits[i].detach().float().cpu()
            if req.output_ids:                 # re-encoding committed output: a real forward
                self._stats(req).forwards += 1
        return out.logits_output, [], None, None, out.can_run_graph

    @staticmethod
    def _stats(req) -> RequestStats:
        if getattr(req, "nld_stats", None) is None:
            req.nld_stats = RequestStats()
        return req.nld_stats

    def _params(self, req) -> RequestParams:
        if getattr(req, "nld_params", None) is None:
            req.nld_params = parse(req.sampling_params.custom_params, sampling_view(req),
                                   type(self).defaults)
            seed = req.nld_params.seed
            if seed is None:
                seed = int.from_bytes(hashlib.blake2b(str(req.rid).encode(),
                                                      digest_size=8).digest(), "little")
            req.nld_generator = torch.Generator().manual_seed(seed)
            self._stats(req).mode = req.nld_params.mode
        return req.nld_params

    def _custom_pass(self, model_runner, forward_batch, members, lora: bool) -> None:
        """Passes outside SGLang's canvas shape, through ``run_custom_pass``: the fused
        B·(B+1) quadratic pass, and bidirectional passes of a request block smaller than the
        server's (a B-slot canvas would let the extra mask slots join the block)."""
        specs, ids, pos = [], [], []
        for row, p in members:
            specs.append(RowSpec(int(forward_batch.req_pool_indices[row.index]), row.start,
                                 len(p.token_ids), p.mask))
            ids += p.token_ids
            pos += p.positions
        model = model_runner.model
        model.set_causal(True)           # every attention call is routed by the rows' masks
        model.lora_active = lora
        try:
            logits = run_custom_pass(model_runner, forward_batch, ids, pos, specs,
                                     self.custom_attention)
        finally:
            model.lora_active = False
        start = 0
        for row, p in members:
            n = len(p.token_ids)
            keep = row.strategy.on_logits(row.state, p,
                                          logits[start:start + n].detach().float().cpu())
            if p.write_kv:
                row.state.kv_len += keep
            row.forwards += 1
            start += n

    def _row(self, i: int, req, start: int, model, batch_size: int) -> _Row:
        prm = self._params(req)
        mode = prm.mode
        if mode == "auto":             # spec modes fill every forward with B tokens per request
            mode = "linear_spec" if batch_size <= type(self).defaults.auto_max_batch else "ar"
            self._stats(req).auto_rounds[mode] = self._stats(req).auto_rounds.get(mode, 0) + 1
        strategy = get_strategy(mode)
        limit = req.sampling_params.max_new_tokens       # None: up to the context length
        remaining = max(1, limit - len(req.output_ids)) if limit is not None else 1 << 30
        st = RequestState(
            rid=i, prompt=[], block=prm.block_length, mask_id=self.mask_id, eos_id=self.eos_id,
            params=DecodeParams(max_new_tokens=remaining, block_length=prm.block_length,
                                threshold=prm.threshold, temperature=prm.temperature),
            kv_len=start, generator=req.nld_generator)
        st.lora = strategy.uses_lora and model.has_lora
        if strategy.name == "quadratic_spec":
            st.scratch["carry"] = getattr(req, "nld_carry", None)
        seed_logits = getattr(req, "nld_seed_logits", None)
        if seed_logits is None:
            raise RuntimeError(f"request {req.rid}: canvas round without a context pass")
        req.nld_seed_logits = None             # each seed is used by exactly one round
        strategy.start(st, seed_logits)
        return _Row(i, req, strategy, st, start)

    def _canvas_round(self, model_runner, model, forward_batch, reqs) -> DllmRunOutput:
        b, bs = self.block_size, forward_batch.batch_size
        canvas = forward_batch.input_ids.view(bs, b)
        starts = forward_batch.positions.view(bs, b)[:, 0].tolist()
        rows = [self._row(i, req, starts[i], model, bs) for i, req in enumerate(reqs)]
        last = None
        while True:
            plans = []
            for row in rows:
                if row.done:
                    continue
                st = row.state
                if st.finished or st.kv_len != row.start:
                    row.done = True
                    continue
                p = row.strategy.next_pass(st)
                if p.refresh:                  # the next context round does this pass
                    row.done = True
                    continue
                plans.append((row, p))
            if not plans:
                break
            groups: dict[tuple, list] = {}
            for row, p in plans:
                groups.setdefault((p.mask.kind.value, p.lora), []).append((row, p))
            for (kind, lora), members in sorted(groups.items()):
                causal = kind == MaskKind.CAUSAL.value
                custom, on_canvas = [], []
                for m in members:
                    fits = kind != MaskKind.QUADRATIC.value and (causal or len(m[1].token_ids) == b)
                    (on_canvas if fits else custom).append(m)
                if custom:
                    self._custom_pass(model_runner, forward_batch, custom, lora)
                if not on_canvas:
                    continue
                members = on_canvas
                for row, p in members:
                    n = len(p.token_ids)
                    if p.mask.kind == MaskKind.QUADRATIC or n > b or (not causal and n != b) \
                            or p.positions[0] != row.start:
                        raise RuntimeError(f"{row.strategy.name}: pass does not fit the "
                                           f"{b}-slot canvas at position {row.start}")
                    canvas[row.index, :n] = torch.tensor(p.token_ids, dtype=canvas.dtype)
                    canvas[row.index, n:] = self.mask_id
                model.set_causal(causal)
                model.lora_active = lora
                try:
                    last = model_runner.forward(forward_batch, pp_proxy_tensors=None)
                finally:
                    model.lora_active = False
                full = last.logits_output.full_logits.view(bs, b, -1)
                for row, p in members:
                    logits = full[row.index, :len(p.token_ids)].detach().float().cpu()
                    keep = row.strategy.on_logits(row.state, p, logits)
                    if p.write_kv:
                        row.state.kv_len += keep
                    row.forwards += 1
        model.set_causal(True)
        out_tokens = []
        for row in rows:
            st, stats = row.state, self._stats(row.req)
            # quadratic: the last pass's drafts continue after this round's tokens
            row.req.nld_carry = ((st.scratch.get("drafts"), st.scratch.get("q"))
                                 if row.strategy.name == "quadratic_spec" and len(st.output) <= b
                                 else None)
            stats.forwards += row.forwards
            stats.cycles += st.cycles
            # a round returns at most B tokens; a dropped bonus is recomputed next round
            stats.cycle_tokens += st.cycle_tokens - max(0, len(st.output) - b)
            out_tokens.append(torch.tensor(st.output[:b], dtype=torch.long))
        logits_output = last.logits_output if last is not None else None
        return logits_output, out_tokens, None, None, False


Algorithm = NemotronTriMode
