"""SGLang attention backend ``nemotron``: every pass's attention through the plugin's kernels.

One responsibility: adapt SGLang's ``AttentionBackend`` interface to :class:`RowAttention`
(``custom_pass.py``), so that ``--attention-backend nemotron`` runs prefill, decode, the dLLM
canvas passes and the KV-writing passes on ``nemotron_sglang.kernels`` (Triton) over SGLang's
paged pool, with the same code path the fused quadratic pass uses. It owns no model knowledge:
the mask of a pass is read from the layer's ``attn_type`` (SGLang's own flag: DECODER for every
pass SGLang runs through NLD's model; the canvas passes bring their masks through the custom
pass instead):

    extend, DECODER (causal)        extend, ENCODER_ONLY (block-bidirectional)
    prefix p = 2, new tokens q = 3   prefix p = 2, new tokens q = 3
          k0 k1 | k2 k3 k4                 k0 k1 | k2 k3 k4
      q0   1  1 |  1  .  .             q0   1  1 |  1  1  1
      q1   1  1 |  1  1  .             q1   1  1 |  1  1  1
      q2   1  1 |  1  1  1             q2   1  1 |  1  1  1

A decode pass is the causal case with q = 1 per request. Per request the rows are
``PlanRow(req_pool_index, prefix_len = extend_prefix_len, q_len = extend_len, mask)``
(``core.step_plan``; one read of the pass's pool indices, outside any canvas step); the new
K/V are written to ``out_cache_loc`` first (as every SGLang backend does) and attended from the
pass's own ``k, v``.

Implementation: ``triton`` where Triton can run (a CUDA device, or ``TRITON_INTERPRET=1`` on CPU:
how CI proves it), else core's reference attention (``reference``: the readable twin, same
contract). ``NEMOTRON_SGLANG_ATTENTION_IMPL=reference|triton|flashinfer`` overrides the
choice (``flashinfer``: FlashInfer's paged + ragged prefill merged; CUDA only, not yet run on a
GPU). CUDA graphs are not supported (SGLang's graph capture needs fixed-shape metadata this
backend does not build): serve with ``--disable-cuda-graph``; capture fails saying so.
"""

from __future__ import annotations

import logging


from ..core.attention import MaskKind, MaskSpec
from ..kernels import IMPL_ENV, choose_attention  # noqa: F401 - IMPL_ENV: the backend's override
from ..core.step_plan import PlanRow
from .custom_pass import HeadShape, RowAttention

BACKEND_NAME = "nemotron"
logger = logging.getLogger(__name__)


# the backend's implementation: the kernels' one policy (names, env override, CUDA/interpreter)
default_impl = choose_attention


def _make_backend_class():
    """The backend class, built on first use so that importing this module needs no sglang."""
    from sglang.srt.layers.attention.base_attn_backend import AttentionBackend
    from sglang.srt.layers.radix_attention import AttentionType
    from sglang.srt.mem_cache.memory_pool import KVWriteLoc

    class NemotronAttnBackend(AttentionBackend):
        def __init__(self, model_runner):
            super().__init__()
            self.device = model_runner.device
            self.req_to_token_pool = model_runner.req_to_token_pool
            self.token_to_kv_pool = model_runner.token_to_kv_pool
            self.impl = default_impl(self.device)
            logger.info("nemotron attention backend: %s on %s", self.impl, self.device)
            self._rows: dict[bool, RowAttention] = {}
            self._batch = None

        # ---- metadata: one RowAttention per (pass, causality), shared by all layers
        def init_forward_metadata(self, forward_batch) -> None:
            self._batch, self._rows = forward_batch, {}

        def _row_attention(self, forward_batch, causal: bool, layer) -> RowAttention:
            if forward_batch is not self._batch:          # a batch SGLang did not announce
                self.init_forward_metadata(forward_batch)
            if causal not in self._rows:
                pool_idx = forward_batch.req_pool_indices.tolist()
                if forward_batch.forward_mode.is_decode():
                    lens = (forward_batch.seq_lens_cpu if forward_batch.seq_lens_cpu is not None
                            else forward_batch.seq_lens).tolist()
                    prefix, q_len = [n - 1 for n in lens], [1] * len(lens)
                else:
                    prefix = list(forward_batch.extend_prefix_lens_cpu)
                    q_len = list(forward_batch.extend_seq_lens_cpu)
                mask = MaskSpec(MaskKind.CAUSAL if causal else MaskKind.BIDIRECTIONAL)
                rows = [PlanRow(int(i), int(p), int(n), mask)
                        for i, p, n in zip(pool_idx, prefix, q_len)]
                heads = HeadShape(layer.tp_q_head_num, layer.tp_k_head_num, layer.qk_head_dim)
                self._rows[causal] = RowAttention.planned(rows, self.impl, self.device, heads)
            return self._rows[causal]

        # ---- the two entry points SGLang's AttentionBackend.forward dispatches to
        def _forward(self, q, k, v, layer, forward_batch, save_kv_cache: bool, causal: bool):
            if layer.is_cross_attention:
                raise NotImplementedError("the nemotron attention backend has no cross-attention")
            if layer.sliding_window_size is not None and layer.sliding_window_size > -1:
                raise NotImplementedError("the nemotron attention backend has no sliding window")
            if save_kv_cache and k is not None and v is not None:
                self.token_to_kv_pool.set_kv_buffer(
                    layer, KVWriteLoc(forward_batch.out_cache_loc, None), k, v)
            q = q.reshape(-1, layer.tp_q_head_num * layer.qk_head_dim)
            rows = self._row_attention(forward_batch, causal, layer)
            return rows.attend(q, k, v, layer, self.token_to_kv_pool,
                               self.req_to_token_pool.req_to_token)

        def forward_extend(self, q, k, v, layer, forward_batch, save_kv_cache=True, **kwargs):
            causal = layer.attn_type != AttentionType.ENCODER_ONLY
            return self._forward(q, k, v, layer, forward_batch, save_kv_cache, causal)

        def forward_decode(self, q, k, v, layer, forward_batch, save_kv_cache=True, **kwargs):
            return self._forward(q, k, v, layer, forward_batch, save_kv_cache, True)

        def init_cuda_graph_state(self, max_bs: int, max_num_tokens: int):
            raise NotImplementedError("the nemotron attention backend does not support CUDA "
                                      "graphs: add --disable-cuda-graph")

    return NemotronAttnBackend


_BACKEND_CLASS = None


def create_backend(model_runner):
    """Factory registered under ``BACKEND_NAME`` in SGLang's attention registry."""
    global _BACKEND_CLASS
    if _BACKEND_CLASS is None:
        _BACKEND_CLASS = _make_backend_class()
    return _BACKEND_CLASS(model_runner)
