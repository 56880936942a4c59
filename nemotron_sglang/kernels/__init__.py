"""Attention and KV-write kernels over core's paged KV cache, chosen by name.

Every attention implementation has the signature of
:func:`nemotron_sglang.core.attention.paged_attention` (the readable oracle), so any of them
can be handed to ``NLDModel(cfg, attention_fn=...)``:

* ``reference`` — core's PyTorch attention (dense mask per row);
* ``triton``    — :func:`~.triton_attention.paged_attention_triton` (needs triton; on CPU only
  under ``TRITON_INTERPRET=1``);
* ``flashinfer`` — :func:`~.flashinfer_attention.paged_attention_flashinfer` (needs flashinfer
  and CUDA; unproven until run on a GPU).

``choose_attention`` is the one policy that picks among them (a server's SGLang backend and its
custom passes both call it, once). ``kv_write`` is not on the server's path (SGLang's pool
writes K/V through ``set_kv_buffer``); it is tested against its torch twin and kept for a
device-side write into core's cache.

Importing this package needs neither triton nor flashinfer: both are imported on first use.
Dependency direction: core <- kernels <- sglang_plugin; core never imports this package.
"""

from __future__ import annotations

import os

import torch

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


IMPL_ENV = "NEMOTRON_SGLANG_ATTENTION_IMPL"


def get_attention_impl(name: str):
    """The attention function registered as ``name``; unknown names raise ``KeyError``."""
    return ATTENTION_IMPLS[name]


def choose_attention(device: torch.device | str, requested: str | None = None,
                     field: str = IMPL_ENV, interpreter: bool = True) -> str:
    """The implementation to run on ``device``: ``requested`` (named by ``field`` if unknown),
    else ``$NEMOTRON_SGLANG_ATTENTION_IMPL``, else ``triton`` on CUDA (or, with
    ``interpreter``, under ``TRITON_INTERPRET=1``) when triton imports, else ``reference``."""
    if requested is None:
        requested, field = os.environ.get(IMPL_ENV), IMPL_ENV
    if requested is not None:
        if requested not in ATTENTION_IMPLS:
            raise ValueError(f"{field} must be one of {' | '.join(ATTENTION_IMPLS)}, "
                             f"got {requested!r}")
        return requested
    if not triton_available():
        return "reference"
    on_cuda = torch.device(device).type == "cuda"
    interpreted = interpreter and os.environ.get("TRITON_INTERPRET") == "1"
    return "triton" if on_cuda or interpreted else "reference"


__all__ = ["ATTENTION_IMPLS", "AttentionMetadata", "IMPL_ENV", "attention_for_forward",
           "build_metadata", "choose_attention",
           "commit_lengths_", "flashinfer_available", "get_attention_impl", "kv_write",
           "kv_write_torch", "kv_write_triton", "paged_attention", "paged_attention_flashinfer",
           "paged_attention_triton", "paged_attention_with_metadata", "staging_slots",
           "triton_available"]
