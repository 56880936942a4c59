"""Everything the plugin changes in SGLang (and transformers), in one list, each entry checked at
start-up: SGLang only logs a plugin's failure, so an entry that did not take is an error here,
as a hook target that does not resolve is (``__init__.register``).

    registry entries (``entries()``)                          hooks (``hook_plan()``)
    transformers AutoConfig: the text and the VLM configs     hooks.py, retraction.py,
    ModelRegistry: the text and the VLM model classes         prompt_logprobs.py, metrics.py,
    dLLM algorithms: NemotronTriMode                          surface.py, vlm.py and, on the
    attention backends: --attention-backend nemotron          CPU platform, platform.CPU_HOOKS
      (the flag's choices and the factory)
    multimodal: the VLM architecture, LLaVA's processor
      models, the processor mapping
    OpenAI protocol: usage models that carry NLD's fields

Each entry is (what it changes, apply, holds): ``apply`` makes the change (idempotent),
``holds`` says whether SGLang now sees it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable


@dataclass(frozen=True)
class Entry:
    what: str
    apply: Callable[[], None]
    holds: Callable[[], bool]


def _append_once(seq: list, item) -> None:
    if item not in seq:
        seq.append(item)


def _config_is(mapping, model_type: str, cls) -> bool:
    """transformers' lazy config mapping resolves ``model_type`` to ``cls`` (its ``get`` does
    not see registered types: index it)."""
    try:
        return mapping[model_type] is cls
    except KeyError:
        return False


def entries() -> list[Entry]:
    """The registry entries (module docstring), in the order they are applied."""
    from sglang.srt.arg_groups.choices import ATTENTION_BACKEND_CHOICES
    from sglang.srt.configs import model_config
    from sglang.srt.dllm import algorithm as algorithms
    from sglang.srt.entrypoints.openai import protocol
    from sglang.srt.layers.attention.attention_registry import ATTENTION_BACKENDS
    from sglang.srt.managers import multimodal_processor
    from sglang.srt.models.registry import ModelRegistry
    from sglang.srt.multimodal.processors.llava import LlavaMultimodalProcessor
    from transformers import AutoConfig
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    from ..core.config import ARCHITECTURE
    from ..core.modes import ALGORITHM_NAME
    from . import attention_backend, surface
    from .algorithm import NemotronTriMode
    from .hf_config import NemotronLabsDiffusionConfig
    from .model import NemotronLabsDiffusionForSGLang
    from .vlm import (VLM_ARCHITECTURE, VLM_MODEL_TYPE, NemotronLabsDiffusionVLMConfig,
                      NemotronLabsDiffusionVLMModel)

    text_type = NemotronLabsDiffusionConfig.model_type
    backend = attention_backend.BACKEND_NAME
    return [
        Entry(f"transformers AutoConfig[{text_type!r}]",
              lambda: AutoConfig.register(text_type, NemotronLabsDiffusionConfig, exist_ok=True),
              lambda: _config_is(CONFIG_MAPPING, text_type, NemotronLabsDiffusionConfig)),
        Entry(f"transformers AutoConfig[{VLM_MODEL_TYPE!r}]",
              lambda: AutoConfig.register(VLM_MODEL_TYPE, NemotronLabsDiffusionVLMConfig,
                                          exist_ok=True),
              lambda: _config_is(CONFIG_MAPPING, VLM_MODEL_TYPE, NemotronLabsDiffusionVLMConfig)),
        Entry(f"ModelRegistry.models[{ARCHITECTURE!r}]",
              lambda: ModelRegistry.models.__setitem__(ARCHITECTURE,
                                                       NemotronLabsDiffusionForSGLang),
              lambda: ModelRegistry.models.get(ARCHITECTURE) is NemotronLabsDiffusionForSGLang),
        Entry(f"ModelRegistry.models[{VLM_ARCHITECTURE!r}]",
              lambda: ModelRegistry.models.__setitem__(VLM_ARCHITECTURE,
                                                       NemotronLabsDiffusionVLMModel),
              lambda: ModelRegistry.models.get(VLM_ARCHITECTURE) is NemotronLabsDiffusionVLMModel),
        Entry(f"dLLM algorithm {ALGORITHM_NAME!r}",
              lambda: algorithms.algo_name_to_cls.__setitem__(ALGORITHM_NAME, NemotronTriMode),
              lambda: algorithms.get_algorithm_cls(ALGORITHM_NAME) is NemotronTriMode),
        Entry(f"--attention-backend choice {backend!r}",
              lambda: _append_once(ATTENTION_BACKEND_CHOICES, backend),
              lambda: backend in ATTENTION_BACKEND_CHOICES),
        Entry(f"attention backend factory {backend!r}",
              lambda: ATTENTION_BACKENDS.__setitem__(backend, attention_backend.create_backend),
              lambda: ATTENTION_BACKENDS.get(backend) is attention_backend.create_backend),
        Entry(f"multimodal architecture {VLM_ARCHITECTURE!r}",
              lambda: _append_once(model_config.multimodal_model_archs, VLM_ARCHITECTURE),
              lambda: model_config.is_multimodal_model([VLM_ARCHITECTURE])),
        Entry("LLaVA processor models += the VLM",
              lambda: _append_once(LlavaMultimodalProcessor.models,
                                   NemotronLabsDiffusionVLMModel),
              lambda: NemotronLabsDiffusionVLMModel in LlavaMultimodalProcessor.models),
        Entry("PROCESSOR_MAPPING[the VLM] = LLaVA's processor (Pixtral)",
              lambda: multimodal_processor.PROCESSOR_MAPPING.__setitem__(
                  NemotronLabsDiffusionVLMModel, LlavaMultimodalProcessor),
              lambda: multimodal_processor.PROCESSOR_MAPPING.get(
                  NemotronLabsDiffusionVLMModel) is LlavaMultimodalProcessor),
        Entry("OpenAI UsageInfo (and the models that carry it) accept NLD's usage fields",
              surface.allow_usage_extras,
              lambda: protocol.UsageInfo.model_config.get("extra") == "allow"),
    ]


def hook_plan(cpu_platform: bool) -> list[tuple[str, Callable, object]]:
    """The hooks: (target, function, SGLang's HookType), every target resolved at start-up."""
    from sglang.srt.plugins.hook_registry import HookType

    from . import hooks, metrics, platform, prompt_logprobs, retraction, surface, vlm

    plan = [(hooks.DLLM_CONFIG_TARGET, hooks.dllm_config_from_server_args, HookType.AROUND),
            (hooks.TP_WORKER_TARGET, hooks.attach_requests, HookType.AROUND),
            (hooks.STASH_TARGET, hooks.keep_canvas_kv, HookType.AROUND),
            (retraction.SCHEDULE_TARGET, retraction.schedule_with_retraction, HookType.AROUND),
            (retraction.ABORT_TARGET, retraction.abort_parked, HookType.AFTER),
            (hooks.INIT_TARGET, hooks.cap_running_requests, HookType.AROUND),
            (prompt_logprobs.TARGET, prompt_logprobs.keep_prompt_logprobs, HookType.AROUND),
            (metrics.REPORT_TARGET, metrics.report_canvas_round, HookType.AROUND),
            (metrics.PUBLISH_TARGET, metrics.publish_canvas_load, HookType.AROUND),
            *[(t, surface.copy_top_level_fields, HookType.AFTER)
              for t in surface.CONVERT_TARGETS],
            (surface.TOKENIZE_TARGET, surface.check_tokenized, HookType.AFTER),
            (vlm.TOKENIZE_ONE_TARGET, vlm.check_images, HookType.AROUND),
            (surface.STREAM_TARGET, surface.export_stats, HookType.BEFORE),
            (surface.USAGE_TARGET, surface.add_usage, HookType.AFTER),
            (surface.STREAM_USAGE_TARGET, surface.add_streaming_usage, HookType.AFTER),
            (surface.GENERATE_TARGET, surface.track_stream_meta, HookType.AROUND)]
    if cpu_platform:                         # the CPU platform: fill SGLang's CPU gaps
        plan += [(target, fn, HookType.AROUND) for target, fn in platform.CPU_HOOKS]
    return plan


# what the hooks call on SGLang's objects (resolved at start-up, like the targets)
def called() -> tuple[str, ...]:
    from . import hooks, metrics, prompt_logprobs, retraction

    return hooks.CALLED + retraction.CALLED + prompt_logprobs.CALLED + metrics.CALLED
