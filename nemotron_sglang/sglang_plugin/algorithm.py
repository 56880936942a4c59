"""``NemotronTriMode``: one SGLang dLLM algorithm that runs every request in its own decode mode.

It drives core's mode strategies (``core/decoding``) on SGLang's lifecycle with a separate
context pass (``requires_separate_context_encoding``), with each request's core state kept
across rounds (``request.NLDRequest`` on ``req.nld``: begun with the parameters the scheduler's
``TriModeConfig.validate_request`` parsed, completed here at first sight, never parsed again):

- a context round is a causal EXTEND of a prompt (or, after a retraction, of everything
  committed); its last logit per request starts a fresh core state (the AR-exact seed);
- a canvas round (``canvas_round.CanvasRound``) advances every request by its own mode's passes,
  one forward per step carrying exactly each row's pass under its own mask (``step_forward``),
  and returns the emitted tokens whose KV it wrote; ``hooks.keep_canvas_kv`` keeps exactly that
  KV of the canvas, so the next round is again a canvas round: no re-encode;
- before a canvas round, ``auto_plan.AutoPlanner`` sets each idle ``auto`` request's strategy
  and block for the round (the YAML's ``cost_model``).

Forwards per cycle, as core counts them: ``ar`` 1 per token (1 round per token), ``linear_spec``
draft + verify, ``quadratic_spec`` 1 fused pass, ``diffusion`` k denoise passes + 1 refresh.
Every pass's decisions run where its logits are (``core.decoding.decide_batched``): one small
device→host read per pass, never a row of logits. CUDA graphs are off
for the dLLM path (one log line): a captured graph would bake in one causality and LoRA state.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, List, Optional

import torch

from sglang.srt.arg_groups.overrides import declare_resolution
from sglang.srt.dllm.algorithm.base import DllmAlgorithm, DllmRunOutput

from ..core.host_pack import HostPack
from ..core.logits import PassLogits
from ..core.step_plan import PlanRow
from ..core.vlm_checkpoint import SERVED_ARCHITECTURES
from ..core.auto_policy import AUTO_START
from ..core.modes import AUTO, infill_canvas
from ..core.decoding import DecodeParams, RequestState, decide_batched, get_strategy, seed_ask
from ..core.decoding.grammar import GrammarCursor
from ..core.weights import LORA_DIR, load_lora
from ..kernels import choose_attention
from .auto_plan import AutoPlanner
from .canvas_round import CanvasRound, Row
from .custom_pass import run_custom_pass
from .grammar import SGLangGrammar, constrains
from .params import sampling_rule
from .request import NLDRequest
from .step_graphs import MODES as STEP_GRAPH_MODES, ServerStepGraphs
from .server_config import TriModeConfig, custom_transform, sampling_view

logger = logging.getLogger(__name__)

class NemotronTriMode(DllmAlgorithm):
    supported_architectures = SERVED_ARCHITECTURES
    requires_separate_context_encoding = True
    required_attention_backend = "triton"
    supported_attention_backends = ("triton", "torch_native", "nemotron")

    @classmethod
    def configure_server_args(cls, server_args) -> None:
        # variable-length commits need the synchronous lifecycle; one context pass per prompt
        declare_resolution(server_args, cls.__name__, disable_radix_cache=True,
                           chunked_prefill_size=-1, dllm_fdfo=False,
                           disable_prefill_cuda_graph=True, disable_decode_cuda_graph=True)
        if torch.cuda.is_available() and str(getattr(server_args, "device", "cuda")) != "cpu":
            logger.warning("NemotronTriMode: CUDA graphs are off for the dLLM path (a captured "
                           "graph would replay one causality and LoRA state for every pass; "
                           "per-variant capture is not yet proven on a GPU)")

    def __init__(self, config: TriModeConfig):
        if not isinstance(config, TriModeConfig):
            raise TypeError("NemotronTriMode serves NLD checkpoints: its DllmConfig comes from "
                            "the plugin's hook (hooks.dllm_config_from_server_args), got "
                            f"{type(config).__name__}")
        super().__init__(config)
        self.config = config
        settings = config.settings                   # core's ServerSettings, checked at load
        if self.fdfo:
            raise ValueError("NemotronTriMode needs --no-dllm-fdfo (variable-length commits)")
        self.defaults = defaults = config.defaults
        self.eos_id = None
        self.vocab = 0
        self.lora_path = self._lora_path(settings.lora_path, config.model_path)
        # attention of the custom passes (kernels' one policy: Triton on CUDA, else reference;
        # never the interpreter unless the YAML names triton: it is a test device, 100x slower)
        self.custom_attention = choose_attention(
            "cuda" if torch.cuda.is_available() else "cpu", settings.custom_attention,
            field="NemotronTriMode YAML custom_attention", interpreter=False)
        self.step_graphs = self._step_graphs(settings.step_graphs)
        self._lora_ready = False
        self._has_lora = False
        self.decide = decide_batched         # the decision layer (tests swap in decide_each)
        # "auto" picks its block per round from this table (core/auto_policy.py); without one
        # it runs linear_spec while a round holds <= auto_max_batch requests, else ar
        self.auto = AutoPlanner(settings.cost_table(), self.block_size, defaults.auto_max_batch)

    def _step_graphs(self, mode) -> ServerStepGraphs | None:
        """The YAML's ``step_graphs`` (``step_graphs.MODES``), with its one start-up line."""
        if mode in (None, False, "off"):
            logger.info("NemotronTriMode: canvas steps run eagerly (step_graphs off: captured "
                        "graphs are not yet proven on a GPU; 'step_graphs: cuda' turns them on)")
            return None
        if mode not in STEP_GRAPH_MODES:
            raise ValueError(f"NemotronTriMode YAML step_graphs {mode!r}: "
                             f"{' | '.join(STEP_GRAPH_MODES)}")
        logger.info("NemotronTriMode: canvas steps replayed from %s graphs, captured at the "
                    "first canvas round", mode)
        return ServerStepGraphs(mode, self.block_size,
                                lambda: getattr(self.config, "max_running_requests", None))

    @staticmethod
    def _lora_path(value: str | None, model_path: str | None) -> Path | None:
        """The YAML's ``lora_path`` (``none`` / ``off``: no adapter), else the checkpoint's own."""
        if value in ("none", "off"):
            return None
        if value:
            p = Path(value)
            if not (p / "adapter_config.json").exists():
                raise ValueError(f"lora_path {p} has no adapter_config.json")
            return p
        if model_path and (Path(model_path) / LORA_DIR / "adapter_config.json").exists():
            return Path(model_path) / LORA_DIR
        return None

    def _ensure_ready(self, model_runner) -> None:
        """First run in this process: read the EOS id and install the drafting LoRA."""
        if self._lora_ready:
            return
        model = model_runner.model
        self.eos_id = model.nld_config.eos_token_id
        self.vocab = model.nld_config.vocab_size
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
        self._has_lora = bool(model.has_lora)
        self._lora_ready = True

    # ---- the SGLang contract --------------------------------------------------------------
    def run(self, model_runner, forward_batch, algo_states: Optional[List[Any]] = None
            ) -> DllmRunOutput:
        reqs = getattr(forward_batch, "nld_reqs", None)
        if reqs is None:
            raise RuntimeError("NemotronTriMode: the nemotron-sglang plugin hooks are not "
                               "active in this process (is the plugin installed?)")
        self._ensure_ready(model_runner)
        if not forward_batch.forward_mode.is_dllm_extend():
            return self._context_round(model_runner, forward_batch, reqs)
        rows = []
        for i, req in enumerate(reqs):
            nld = self.request(req)
            if nld.state is None:
                raise RuntimeError(f"request {req.rid}: canvas round without a context pass")
            # the host values SGLang built the canvas from (its positions start at the request's
            # dllm_block_offset; its pool row is kv.req_pool_idx): nothing is read back
            rows.append(Row(i, req, nld, int(req.dllm_block_offset), int(req.kv.req_pool_idx)))
        self.auto.plan(rows, self._has_lora)
        tokens = CanvasRound(self, model_runner, forward_batch, rows, self.block_size).run()
        return None, tokens, None, None, False

    def _context_round(self, model_runner, forward_batch, reqs) -> DllmRunOutput:
        if forward_batch.input_ids.numel() == 0:
            return None, [], None, None, False
        out = model_runner.forward(forward_batch, pp_proxy_tensors=None)
        logits = out.logits_output.next_token_logits
        states = [self._begin(req) for req in reqs]
        # every seed decided where the logits are, one small host read (decide_batched)
        seeds = self.decide(logits.detach(), [(i, i + 1, seed_ask(st))
                                                 for i, st in enumerate(states)], self.mask_id)
        for req, st, d in zip(reqs, states, seeds):
            req.nld.strategy.start(st, d.tokens[0], d.logprobs[0] if d.logprobs else None)
            req.nld.sync_stats()
        return out.logits_output, [], None, None, out.can_run_graph

    # ---- per-request state ----------------------------------------------------------------
    def request(self, req) -> NLDRequest:
        """The request's typed plugin state, completed on first sight. Its parameters were
        parsed once, by the scheduler's ``validate_request`` (``TriModeConfig.admit``), and
        are not parsed again (a retracted request keeps its state); a request that reached the
        algorithm without it (built directly, as tests do) is admitted here: its one parse."""
        nld = getattr(req, "nld", None)
        if nld is None:
            nld = req.nld = self.config.admit(req)
        if not nld.started:
            self._start(req, nld)
        return nld

    def _start(self, req, nld: NLDRequest) -> None:
        """What the request's state needs from the model and SGLang's later work: its sampling
        rule (the model's EOS among the stop ids), logprob asks, grammar cursor (SGLang compiles
        the grammar after validation) and the strategy of its mode."""
        view = sampling_view(req)
        nld.rule = sampling_rule(view, self._stop_ids(req), custom_transform(req))
        nld.logprobs = view.top_logprobs if view.logprobs else None
        nld.logprob_ids = view.token_ids_logprob
        obj = getattr(req, "grammar", None)      # compiled by SGLang's backend
        if obj is not None and constrains(obj, req.sampling_params.max_new_tokens):
            nld.grammar = GrammarCursor(SGLangGrammar(obj, self.vocab), self.vocab)
        mode = nld.params.mode
        nld.strategy = get_strategy(AUTO_START if mode == AUTO else mode)

    def _stop_ids(self, req) -> set[int]:
        """What min_new_tokens bans, SGLang's set (penaltylib/min_new_tokens.py): stop token
        ids, the request's EOS ids, the tokenizer's extra stop ids and EOS id, the model's EOS."""
        ids = set(req.sampling_params.stop_token_ids or ()) | set(
            getattr(req, "eos_token_ids", None) or ())
        tok = getattr(req, "tokenizer", None)
        if tok is not None:
            ids |= set(getattr(tok, "additional_stop_token_ids", None) or ())
            if getattr(tok, "eos_token_id", None) is not None:
                ids.add(tok.eos_token_id)
        if self.eos_id is not None:
            ids.add(self.eos_id)
        return {int(i) for i in ids if i is not None}

    def _begin(self, req) -> RequestState:
        """A context pass encoded everything committed: a fresh core state (its seed token
        follows from the pass's last logit). Draws continue, so a re-prefill draws fresh
        uniforms."""
        nld = self.request(req)
        draws = 0
        if nld.state is not None:       # a re-prefill (retraction): SGLang dropped the KV
            nld.stats.reprefills += 1
            draws = nld.state.draws
        prm = nld.params
        committed = len(req.origin_input_ids) + len(req.output_ids)
        limit = req.sampling_params.max_new_tokens       # None: up to the context length
        remaining = max(1, limit - len(req.output_ids)) if limit is not None else 1 << 30
        # ignore_eos: SGLang decodes past EOS, so the strategy must not stop there either
        eos = -1 if getattr(req.sampling_params, "ignore_eos", False) else self.eos_id
        st = RequestState(
            rid=0, prompt=[], block=prm.block_length, mask_id=self.mask_id, eos_id=eos,
            params=DecodeParams(max_new_tokens=remaining, block_length=prm.block_length,
                                threshold=prm.threshold, temperature=prm.temperature,
                                sampling=nld.rule, logprobs=nld.logprobs,
                                logprob_ids=nld.logprob_ids, max_steps=prm.max_steps,
                                **self._infill(prm, remaining)),
            kv_len=committed, seed=nld.seed, draws=draws, prior=list(req.output_ids))
        st.lora = nld.strategy.uses_lora and self._has_lora
        if nld.grammar is not None:     # back to what SGLang holds (drops unreturned tokens)
            nld.grammar.seek(list(req.output_ids))
            st.grammar = nld.grammar
        nld.replace_state(st)
        return st

    def _infill(self, prm, remaining: int) -> dict:
        """Core's canvas of an infill request (``canvas``, or the gap a ``suffix`` leaves)."""
        if prm.suffix:
            canvas, gap = infill_canvas(prm.suffix, prm.block_length, remaining, self.mask_id)
            return {"canvas": canvas, "canvas_emit": gap}
        return {"canvas": prm.canvas} if prm.canvas else {}

    # ---- the forward of a round step, for CanvasRound --------------------------------------
    def step_forward(self, model_runner, forward_batch, rows: list[PlanRow],
                     pack: HostPack | None = None) -> PassLogits:
        """One forward of every row's own pass (``run_custom_pass``): its tokens, positions,
        mask and LoRA, K/V written only where its plan says, sent up in one copy with what
        ``pack`` holds; lazy logits [T, V] (``core.logits.PassLogits``)."""
        if self.step_graphs is not None:
            return self.step_graphs.run(model_runner, forward_batch, rows, pack)
        return run_custom_pass(model_runner, forward_batch, rows, self.custom_attention,
                               pack=pack)


Algorithm = NemotronTriMode
