"""Canvas steps replayed from captured graphs (the YAML's ``step_graphs``): the plugin's side of
``kernels.step_graphs.StepGraphs``.

``off`` (the default until a GPU run has proven replay == eager) runs every step through
``custom_pass.run_custom_pass``. ``cuda`` captures one CUDA graph per bucket at the first canvas
round (the round's batch is the template of SGLang's ``ForwardBatch``) and replays it for any
step that fits; ``emulate`` does the same without CUDA (the capture-time call replayed), so a
CPU server proves the step reads nothing per step from Python. Buckets: rows r = 1, 2, 4, ...
up to ``min(--max-running-requests, MAX_GRAPH_ROWS)``, each of r·B tokens, r·B K/V writes and
the tiles of r rows of B tokens, the prefix up to the context length; a step outside them (a
quadratic pass, more rows) runs eagerly. The step's forward reads only the plan's device views
and the K/V destinations (``out_cache_loc``, copied into the bucket's buffer): the attention is
the graph-safe ``RowAttention`` (the Triton kernel on CUDA, its PyTorch twin elsewhere) and the
LoRA branch always runs, scaled per token (0 for rows that do not draft).
"""

from __future__ import annotations

import logging
from typing import Callable

import torch

from ..core.logits import PassLogits
from ..core.step_plan import Bucket
from ..kernels.step import step_config
from ..kernels.step_graphs import StepGraphs
from .custom_pass import RowAttention, StepBackend, head_shape, step_view

logger = logging.getLogger(__name__)

MODES = ("off", "cuda", "emulate")
MAX_GRAPH_ROWS = 64


def server_buckets(block: int, max_rows: int, context: int, heads, device) -> list[Bucket]:
    """The buckets of a server with ``block``-slot canvases and ``max_rows`` running requests."""
    from ..kernels.triton_attention import choose_config
    tile = choose_config([block], [context], heads.group, heads.kv_heads, heads.head_dim,
                         torch.device(device)).block_m // heads.group
    out, r = [], 1
    while True:
        r = min(r, max_rows)
        out.append(Bucket(tokens=r * block, rows=r, writes=r * block,
                          tiles=r * -(-block // tile), tile_tokens=tile, splits=1,
                          max_prefix=context))
        if r >= max_rows:
            return out
        r *= 2


class ServerStepGraphs:
    """The canvas steps of one server through ``StepGraphs`` (captured at the first round)."""

    def __init__(self, mode: str, block: int, max_rows: Callable[[], int | None]):
        """``max_rows``: the server's running-request cap, read at the capture."""
        if mode not in MODES or mode == "off":
            raise ValueError(f"step_graphs {mode!r}: {' | '.join(MODES[1:])} (or off)")
        if mode == "cuda" and not torch.cuda.is_available():
            raise ValueError("NemotronTriMode YAML step_graphs: cuda needs a CUDA device "
                             "(emulate runs anywhere)")
        self.mode, self.block, self._max_rows = mode, block, max_rows
        self.graphs: StepGraphs | None = None
        self._replayed: set[Bucket] = set()

    def _capture(self, model_runner, template) -> None:
        model = model_runner.model
        heads = head_shape(model_runner)
        device = template.input_ids.device
        context = int(model_runner.model_config.context_len)
        max_rows = max(1, min(self._max_rows() or MAX_GRAPH_ROWS, MAX_GRAPH_ROWS))
        buckets = server_buckets(self.block, max_rows, context, heads, device)

        def forward(plan, dest):
            config = step_config(plan.rows, heads, device, plan.bucket)
            attention = RowAttention(plan, "triton", config, plan.write_slots(dest),
                                     graph_safe=True)
            lora = plan.lora if model.has_lora else None
            view = step_view(template, plan)
            backend = StepBackend(model_runner.attn_backend, attention, lora)
            from sglang.srt.model_executor.forward_context import ForwardContext, forward_context
            with forward_context(ForwardContext(attn_backend=backend), forward_batch=view):
                return model.pass_hidden(view)

        self.graphs = StepGraphs(forward, buckets, device, heads,
                                 dest_size=max_rows * self.block, mode=self.mode)
        captured = self.graphs.capture()
        logger.info("NemotronTriMode: %s step graphs captured for %d buckets (rows, tokens): %s; "
                    "a step outside them runs eagerly", self.mode, len(captured),
                    ", ".join(f"({b.rows}, {b.tokens})" for b in captured))

    def run(self, model_runner, forward_batch, rows, pack) -> PassLogits:
        """One canvas step: a replay (or eager outside the buckets); lazy logits [T, V]."""
        if self.graphs is None:
            self._capture(model_runner, forward_batch)
        hidden, plan = self.graphs.run(rows, forward_batch.out_cache_loc, pack)
        if plan.bucket is not None and plan.bucket not in self._replayed:
            self._replayed.add(plan.bucket)
            logger.info("NemotronTriMode: step graph (rows %d, tokens %d) replayed",
                        plan.bucket.rows, plan.bucket.tokens)
        model = model_runner.model
        view = step_view(forward_batch, plan)

        def head(h: torch.Tensor) -> torch.Tensor:
            from sglang.srt.model_executor.forward_context import ForwardContext, forward_context
            with forward_context(ForwardContext(attn_backend=model_runner.attn_backend),
                                 forward_batch=view):
                return model.pass_logits(h, view)

        return PassLogits(hidden, head)
