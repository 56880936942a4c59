"""Attention and KV-write kernels over core's paged KV cache, chosen by name.

Every attention implementation has the signature of
:func:`nemotron_sglang.core.attention.paged_attention` (the readable oracle), so any of them
can be handed to ``NLDModel(cfg, attention_fn=...)``:

* ``reference`` — core's PyTorch attention (dense mask per row);
* ``triton``    — :func:`~.triton_attention.paged_attention_triton` (needs triton; on CPU only
  under ``TRITON_INTERPRET=1``);
* ``flashinfer`` — :func:`~.flashinfer_attention.paged_attention_flashinfer` (needs flashinfer
  and CUDA; unproven until run on a GPU).

Importing this package needs neither triton nor flashinfer: both are imported on first use.
Dependency direction: core <- kernels <- sglang_plugin; core never imports this package.
"""

from __future__ import annotations

from ..core.attention import paged_attention
from .flashinfer_attention import flashinfer_available, paged_attention_flashinfer
from .kv_write import commit_lengths_, kv_write, kv_write_torch, kv_write_triton, staging_slots
from .triton_attention import (AttentionMetadata, attention_for_forward, build_metadata,
                               paged_attention_triton, paged_attention_with_metadata,
                               triton_available)


class _Registry(dict):
    def __missing__(self, name):
        raise KeyError(f"unknown attention implementation {name!r}; known: {sorted(self)}")


ATTENTION_IMPLS: dict = _Registry(reference=paged_attention, triton=paged_attention_triton,
                                  flashinfer=paged_attention_flashinfer)


def get_attention_impl(name: str):
    """The attention function registered as ``name``; unknown names raise ``KeyError``."""
    return ATTENTION_IMPLS[name]


__all__ = ["ATTENTION_IMPLS", "AttentionMetadata", "attention_for_forward", "build_metadata",
           "commit_lengths_", "flashinfer_available", "get_attention_impl", "kv_write",
           "kv_write_torch", "kv_write_triton", "paged_attention", "paged_attention_flashinfer",
           "paged_attention_triton", "paged_attention_with_metadata", "staging_slots",
           "triton_available"]
